//! Boots a kernel with the VMM, serial console on stdout. A developer tool:
//!
//! ```text
//! cargo run -p amphi-vmm --example boot -- KERNEL [--initrd FILE] [--mem MIB]
//!     [--vcpus N] [--cmdline "..."] [--timeout SECS] [--force]
//!     [--disk FILE] [--disk-ro FILE] [--console-socket PATH]
//! ```
//!
//! `--disk`/`--disk-ro` add virtio-blk devices (`vda`, `vdb`, ... in order);
//! `--console-socket` connects a virtio-console to a listening unix socket.
//!
//! `--timeout` stops the VM from the host after that many seconds (the
//! `HostStop` path); `--force` boots a non-PVM kernel on a PVM host.

use std::time::{Duration, Instant};

use amphi_vmm::{BlockConfig, ConsoleBackend, SerialOut, Vm, VmConfig};

fn main() {
    if let Err(e) = run() {
        eprintln!("boot: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = VmConfig {
        serial: SerialOut::Stdout,
        ..VmConfig::default()
    };
    let mut timeout = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--initrd" => config.initrd = Some(value()?.into()),
            "--mem" => config.mem_mib = value()?.parse()?,
            "--vcpus" => config.vcpus = value()?.parse()?,
            "--cmdline" => config.cmdline = value()?,
            "--timeout" => timeout = Some(Duration::from_secs(value()?.parse()?)),
            "--force" => config.force = true,
            "--disk" => config.block_devices.push(BlockConfig::new(value()?, false)),
            "--disk-ro" => config.block_devices.push(BlockConfig::new(value()?, true)),
            "--console-socket" => config.console = Some(ConsoleBackend::Socket(value()?.into())),
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}").into()),
            _ => config.kernel = Some(arg.into()),
        }
    }
    let started = Instant::now();
    let mut vm = Vm::new(&config)?;
    eprintln!("boot: host is {}", vm.kvm_kind());
    let info = vm.load_kernel()?;
    eprintln!("boot: command line: {}", vm.cmdline());
    eprintln!(
        "boot: {:?} entry {:#x}, kernel ends at {:#x}, ready after {:?}",
        info.protocol,
        info.entry.rip,
        info.kernel_end,
        started.elapsed()
    );
    if let Some(limit) = timeout {
        let stop = vm.stop_handle();
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            stop.stop();
        });
    }
    let reason = vm.run()?;
    vm.drain_devices(Duration::from_secs(2));
    eprintln!("boot: {reason} after {:?}", started.elapsed());
    eprintln!(
        "boot: unhandled accesses: pio {:?}, mmio {:?}",
        vm.unhandled_pio(),
        vm.unhandled_mmio()
    );
    Ok(())
}
