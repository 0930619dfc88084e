//! Tiny guests assembled by hand, run on the real /dev/kvm (hardware KVM or
//! PVM). Each guest's source is next to its bytes (GNU as, Intel syntax;
//! long-mode guests are linked at 0x10000, the real-mode one at 0x1000).
//!
//! Without /dev/kvm every test prints a loud `SKIP` line and returns
//! (fails in strict mode: `CI=true` or `AMPHI_TEST_STRICT=1`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use amphi_vmm::{CpuMode, EntryPoint, ExitReason, SerialBuffer, SerialOut, Vm, VmConfig};

mod common;
use common::{kvm_or_skip, long_mode, run_guarded, CODE};

fn tiny_vm(vcpus: u8) -> (Vm, SerialBuffer) {
    let serial = SerialBuffer::new();
    let config = VmConfig {
        mem_mib: 16,
        vcpus,
        serial: SerialOut::Buffer(serial.clone()),
        ..VmConfig::default()
    };
    (Vm::new(&config).expect("creating the VM"), serial)
}

fn report(test: &str, started: Instant) {
    eprintln!("TIMING: {test}: {:?} (Vm::new to exit)", started.elapsed());
}

#[test]
fn long_mode_guest_says_hello() {
    if !kvm_or_skip("long_mode_guest_says_hello") {
        return;
    }
    let started = Instant::now();
    let (mut vm, serial) = tiny_vm(1);
    let created = started.elapsed();
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf8, 0x03,                   // mov dx, 0x3f8
        0x48, 0x8d, 0x35, 0x0c, 0x00, 0x00, 0x00, // lea rsi, [rip + msg]
        0xb9, 0x05, 0x00, 0x00, 0x00,             // mov ecx, 5
        0xf3, 0x6e,                               // rep outsb
        0xb0, 0xfe,                               // mov al, 0xfe
        0xe6, 0x64,                               // out 0x64, al
        0xf4,                                     // hlt
        b'h', b'e', b'l', b'l', b'o',             // msg
    ];
    vm.write_guest(CODE, &code).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    let running = Instant::now();
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);
    assert_eq!(serial.text(), "hello");
    let first = serial.first_byte_at().expect("a first byte");
    eprintln!(
        "TIMING: Vm::new to first serial byte (long mode): {:?} \
         (Vm::new {created:?}, run() to first byte {:?})",
        first - started,
        first - running
    );
    report("long_mode_guest_says_hello", started);
}

#[test]
fn real_mode_guest_says_hello() {
    if !kvm_or_skip("real_mode_guest_says_hello") {
        return;
    }
    let started = Instant::now();
    let (mut vm, serial) = tiny_vm(1);
    #[rustfmt::skip]
    let code = [
        0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xbe, 0x12, 0x10,       // mov si, offset msg (0x1012)
        0xb9, 0x05, 0x00,       // mov cx, 5
        0xac,                   // 1: lodsb
        0xee,                   //    out dx, al
        0xe2, 0xfc,             //    loop 1b
        0xb0, 0xfe,             // mov al, 0xfe
        0xe6, 0x64,             // out 0x64, al
        0xf4,                   // hlt
        b'h', b'e', b'l', b'l', b'o',
    ];
    vm.write_guest(0x1000, &code).unwrap();
    let entry = EntryPoint {
        rsp: 0x8000,
        ..EntryPoint::new(CpuMode::Real, 0x1000)
    };
    vm.set_vcpu_entry(0, &entry).unwrap();
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);
    assert_eq!(serial.text(), "hello");
    let first = serial.first_byte_at().expect("a first byte");
    eprintln!(
        "TIMING: Vm::new to first serial byte (real mode): {:?}",
        first - started
    );
    report("real_mode_guest_says_hello", started);
}

#[test]
fn unknown_ports_and_unmapped_mmio_read_all_ones() {
    if !kvm_or_skip("unknown_ports_and_unmapped_mmio_read_all_ones") {
        return;
    }
    let started = Instant::now();
    let (mut vm, _serial) = tiny_vm(1);
    #[rustfmt::skip]
    let code = [
        0xe4, 0x99,                                     // in al, 0x99
        0x88, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00,       // mov [0x5000], al
        0x66, 0xba, 0x34, 0x12,                         // mov dx, 0x1234
        0x66, 0xed,                                     // in ax, dx
        0x66, 0x89, 0x04, 0x25, 0x02, 0x50, 0x00, 0x00, // mov [0x5002], ax
        0xb8, 0x78, 0x56, 0x34, 0x12,                   // mov eax, 0x12345678
        0xef,                                           // out dx, eax
        0x48, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, // mov rbx, 0xd0000000
        0x8b, 0x03,                                     // mov eax, [rbx]
        0x89, 0x04, 0x25, 0x04, 0x50, 0x00, 0x00,       // mov [0x5004], eax
        0xc7, 0x03, 0xcd, 0xab, 0x00, 0x00,             // mov dword ptr [rbx], 0xabcd
        0x48, 0x8b, 0x43, 0x08,                         // mov rax, [rbx + 8]
        0x48, 0x89, 0x04, 0x25, 0x08, 0x50, 0x00, 0x00, // mov [0x5008], rax
        0xb0, 0xfe,                                     // mov al, 0xfe
        0xe6, 0x64,                                     // out 0x64, al
        0xf4,                                           // hlt
    ];
    vm.write_guest(CODE, &code).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);
    let mut results = [0u8; 16];
    vm.read_guest(0x5000, &mut results).unwrap();
    assert_eq!(results[0], 0xff, "8-bit read of an unknown port");
    assert_eq!(
        &results[2..4],
        &[0xff, 0xff],
        "16-bit read of an unknown port"
    );
    assert_eq!(&results[4..8], &[0xff; 4], "32-bit read of unmapped MMIO");
    assert_eq!(&results[8..16], &[0xff; 8], "64-bit read of unmapped MMIO");
    let pio = vm.unhandled_pio();
    assert_eq!((pio.reads, pio.writes), (2, 1), "{pio:?}");
    let mmio = vm.unhandled_mmio();
    assert_eq!((mmio.reads, mmio.writes), (2, 1), "{mmio:?}");
    report("unknown_ports_and_unmapped_mmio_read_all_ones", started);
}

#[test]
fn i8042_reset_command_is_a_reset_exit() {
    if !kvm_or_skip("i8042_reset_command_is_a_reset_exit") {
        return;
    }
    let started = Instant::now();
    let (mut vm, _serial) = tiny_vm(1);
    // mov al, 0xfe; out 0x64, al; hlt
    vm.write_guest(CODE, &[0xb0, 0xfe, 0xe6, 0x64, 0xf4])
        .unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);
    report("i8042_reset_command_is_a_reset_exit", started);
}

/// Loads an empty IDT, then executes `trap` (1 or 2 bytes).
fn fault_guest(trap: &[u8]) -> Vec<u8> {
    let mut code = vec![
        0x48, 0xb8, 0xce, 0xfa, 0xed, 0xfe, 0x00, 0x00, 0x00, 0x00, // mov rax, 0xfeedface
        0x0f, 0x01, 0x1d, // lidt [rip + idtr]  (rel32 follows)
    ];
    let rel = trap.len() as u32 + 1; // skip trap + hlt
    code.extend_from_slice(&rel.to_le_bytes());
    code.extend_from_slice(trap);
    code.push(0xf4); // hlt
    code.extend_from_slice(&[0; 10]); // idtr: limit 0, base 0
    code
}

#[test]
fn triple_fault_is_reported_with_registers() {
    if !kvm_or_skip("triple_fault_is_reported_with_registers") {
        return;
    }
    let started = Instant::now();
    let (mut vm, _serial) = tiny_vm(1);
    // ud2 with an empty IDT: #UD cannot be delivered -> #GP -> #DF -> shutdown.
    vm.write_guest(CODE, &fault_guest(&[0x0f, 0x0b])).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    let reason = run_guarded(&mut vm);
    eprintln!("{reason}");
    let ExitReason::TripleFault { vcpu, registers } = reason else {
        panic!("expected a triple fault, got {reason}");
    };
    assert_eq!(vcpu, 0);
    assert!(registers.unavailable.is_none());
    assert_eq!(registers.gprs[0], 0xfeed_face, "rax");
    assert_eq!(registers.rip, CODE + 17, "rip at the ud2");
    assert_eq!(registers.idt, (0, 0), "the guest's empty IDT");
    assert_ne!(registers.cr0 & (1 << 31), 0, "paging on");
    assert_ne!(registers.efer & (1 << 10), 0, "long mode active");
    assert_eq!(registers.cr3, 0x9000);
    report("triple_fault_is_reported_with_registers", started);
}

/// `int3` with an empty IDT triple-faults on hardware KVM. On PVM, KVM
/// emulates INT3 for a guest that is not a PVM kernel, and its emulator
/// cannot deliver INT n outside real mode: an emulation failure, which must
/// come back with the instruction bytes and registers.
#[test]
fn int3_with_empty_idt_ends_with_registers() {
    if !kvm_or_skip("int3_with_empty_idt_ends_with_registers") {
        return;
    }
    let (mut vm, _serial) = tiny_vm(1);
    vm.write_guest(CODE, &fault_guest(&[0xcc])).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    let reason = run_guarded(&mut vm);
    eprintln!("on {}: {reason}", vm.kvm_kind());
    match &reason {
        ExitReason::TripleFault { .. } => {}
        ExitReason::EmulationFailure { instruction, .. } => {
            assert_eq!(instruction.first(), Some(&0xcc), "{reason}");
        }
        other => panic!("expected a triple fault or emulation failure, got {other}"),
    }
    let registers = reason.registers().expect("registers");
    assert_eq!(registers.gprs[0], 0xfeed_face, "rax");
    assert_eq!(registers.rip, CODE + 17);
}

/// `pause; jmp .-2`
const SPIN: [u8; 4] = [0xf3, 0x90, 0xeb, 0xfc];

#[test]
fn host_stop_ends_a_spinning_guest_promptly() {
    if !kvm_or_skip("host_stop_ends_a_spinning_guest_promptly") {
        return;
    }
    let started = Instant::now();
    let (mut vm, _serial) = tiny_vm(2);
    vm.write_guest(CODE, &SPIN).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    vm.set_vcpu_entry(1, &long_mode(CODE)).unwrap();

    for round in 0..2 {
        let stop = vm.stop_handle();
        let (tx, rx) = mpsc::channel();
        let stopper = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            tx.send(Instant::now()).unwrap();
            stop.stop();
        });
        let reason = vm.run().unwrap();
        let returned = Instant::now();
        stopper.join().unwrap();
        let latency = returned - rx.recv().unwrap();
        assert_eq!(reason, ExitReason::HostStop);
        assert!(latency < Duration::from_secs(1), "stop took {latency:?}");
        eprintln!("TIMING: host stop latency (round {round}, 2 spinning vCPUs): {latency:?}");
        assert!(!vm.stop_handle().is_requested(), "the request was consumed");
    }

    // A stop requested before run() is honoured at once.
    vm.stop_handle().stop();
    assert_eq!(vm.run().unwrap(), ExitReason::HostStop);
    report("host_stop_ends_a_spinning_guest_promptly", started);
}

#[test]
fn two_vcpus_each_write_their_marker() {
    if !kvm_or_skip("two_vcpus_each_write_their_marker") {
        return;
    }
    let started = Instant::now();
    let (mut vm, serial) = tiny_vm(2);
    #[rustfmt::skip]
    let code = [
        0xb8, 0x01, 0x00, 0x00, 0x00,             // mov eax, 1
        0x0f, 0xa2,                               // cpuid
        0xc1, 0xeb, 0x18,                         // shr ebx, 24         (APIC ID)
        0x8d, 0x43, 0x41,                         // lea eax, [rbx + 'A']
        0x66, 0xba, 0xf8, 0x03,                   // mov dx, 0x3f8
        0xee,                                     // out dx, al
        0x85, 0xdb,                               // test ebx, ebx
        0x75, 0x10,                               // jnz ap
        0xf3, 0x90,                               // bsp: pause
        0x80, 0x3c, 0x25, 0x00, 0x51, 0x00, 0x00, 0x01, // cmp byte ptr [0x5100], 1
        0x75, 0xf4,                               // jne bsp
        0xb0, 0xfe,                               // mov al, 0xfe
        0xe6, 0x64,                               // out 0x64, al
        0xc6, 0x04, 0x25, 0x00, 0x51, 0x00, 0x00, 0x01, // ap: mov byte ptr [0x5100], 1
        0xfa,                                     // cli
        0xf4,                                     // 2: hlt
        0xeb, 0xfd,                               // jmp 2b
    ];
    vm.write_guest(CODE, &code).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    vm.set_vcpu_entry(1, &long_mode(CODE)).unwrap();
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);
    let mut markers = serial.contents();
    markers.sort_unstable();
    assert_eq!(markers, b"AB", "each vCPU printed 'A' + its APIC ID");
    report("two_vcpus_each_write_their_marker", started);
}

#[test]
fn configuration_errors_are_reported() {
    if !kvm_or_skip("configuration_errors_are_reported") {
        return;
    }
    let zero = VmConfig {
        vcpus: 0,
        ..VmConfig::default()
    };
    assert!(Vm::new(&zero).is_err());
    let (mut vm, _serial) = tiny_vm(1);
    assert!(matches!(
        vm.load_kernel(),
        Err(amphi_vmm::VmmError::NoKernel)
    ));
    assert!(vm.set_vcpu_entry(3, &long_mode(CODE)).is_err());
    assert!(vm.write_guest(16 << 20, &[1]).is_err());
}

/// The way Linux starts secondary CPUs: the boot vCPU sends INIT and a
/// startup IPI through its (in-kernel) local APIC; the second vCPU, which
/// waits for SIPI, starts in real mode at the vector's page.
#[test]
fn boot_vcpu_starts_the_second_with_init_sipi() {
    if !kvm_or_skip("boot_vcpu_starts_the_second_with_init_sipi") {
        return;
    }
    let started = Instant::now();
    let (mut vm, serial) = tiny_vm(2);
    #[rustfmt::skip]
    let bsp = [
        0x66, 0xba, 0xf8, 0x03,                   // mov dx, 0x3f8
        0xb0, 0x41,                               // mov al, 'A'
        0xee,                                     // out dx, al
        0x48, 0xbb, 0x00, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00, // mov rbx, 0xfee00000 (LAPIC)
        0xc7, 0x83, 0x10, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // ICR high: APIC ID 1
        0xc7, 0x83, 0x00, 0x03, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00, // ICR low: INIT, assert
        0xc7, 0x83, 0x10, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // ICR high: APIC ID 1
        0xc7, 0x83, 0x00, 0x03, 0x00, 0x00, 0x01, 0x46, 0x00, 0x00, // ICR low: SIPI, vector 1
        0xf3, 0x90,                               // 1: pause
        0x80, 0x3c, 0x25, 0x00, 0x51, 0x00, 0x00, 0x01, // cmp byte ptr [0x5100], 1
        0x75, 0xf4,                               // jne 1b
        0xb0, 0xfe,                               // mov al, 0xfe
        0xe6, 0x64,                               // out 0x64, al
        0xf4,                                     // hlt
    ];
    #[rustfmt::skip]
    let trampoline = [ // 16-bit, at 0x1000 (SIPI vector 1)
        0xba, 0xf8, 0x03,                         // mov dx, 0x3f8
        0xb0, 0x42,                               // mov al, 'B'
        0xee,                                     // out dx, al
        0x31, 0xc0,                               // xor ax, ax
        0x8e, 0xd8,                               // mov ds, ax
        0xc6, 0x06, 0x00, 0x51, 0x01,             // mov byte ptr [0x5100], 1
        0xfa,                                     // cli
        0xf4,                                     // 2: hlt
        0xeb, 0xfd,                               // jmp 2b
    ];
    vm.write_guest(CODE, &bsp).unwrap();
    vm.write_guest(0x1000, &trampoline).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);
    assert_eq!(serial.text(), "AB");
    report("boot_vcpu_starts_the_second_with_init_sipi", started);
}
