//! Tiny hand-made guests for `amphi vmm` and QEMU on this host's KVM: an
//! ELF "kernel" whose few instructions run at once.

/// A minimal ELF64 "kernel": `code` loaded at 1 MiB and entered there
/// through PVH (32-bit protected mode, paging off). Not a PVM kernel, so a
/// PVM host needs `--force`.
pub fn tiny_guest(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    // The note: namesz, descsz, type XEN_ELFNOTE_PHYS32_ENTRY (18), "Xen\0", entry.
    let mut note = Vec::new();
    for word in [4u32, 4, 18] {
        note.extend(word.to_le_bytes());
    }
    note.extend(b"Xen\0");
    note.extend((LOAD as u32).to_le_bytes());
    let code_at = (EHDR + 2 * PHDR) as u64;
    let note_at = code_at + code.len() as u64;

    let mut elf = Vec::new();
    elf.extend(b"\x7fELF\x02\x01\x01");
    elf.resize(16, 0);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(62u16.to_le_bytes()); // EM_X86_64
    elf.extend(1u32.to_le_bytes()); // EV_CURRENT
    elf.extend(LOAD.to_le_bytes()); // e_entry
    elf.extend((EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend(0u64.to_le_bytes()); // e_shoff
    elf.extend(0u32.to_le_bytes()); // e_flags
    for half in [EHDR as u16, PHDR as u16, 2, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend(half.to_le_bytes());
    }
    let mut phdr = |kind: u32, flags: u32, offset: u64, addr: u64, size: u64, align: u64| {
        elf.extend(kind.to_le_bytes());
        elf.extend(flags.to_le_bytes());
        for v in [offset, addr, addr, size, size, align] {
            elf.extend(v.to_le_bytes());
        }
    };
    phdr(1, 5, code_at, LOAD, code.len() as u64, 0x1000); // PT_LOAD, R+X
    phdr(4, 4, note_at, 0, note.len() as u64, 4); // PT_NOTE
    elf.extend(code);
    elf.extend(note);
    elf
}

/// `jmp $`
pub const HANG: &[u8] = &[0xeb, 0xfe];
/// `mov al, 0xfe; out 0x64, al; jmp $`: reset through the i8042.
pub const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];
/// `ud2` with no usable IDT: #UD, #DF, triple fault.
pub const UD2: &[u8] = &[0x0f, 0x0b];

/// Writes a tiny guest to a temporary file.
pub fn guest_file(code: &[u8]) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .prefix("amphi-tiny-guest-")
        .suffix(".elf")
        .tempfile()
        .unwrap();
    std::fs::write(file.path(), tiny_guest(code)).unwrap();
    file
}

/// Whether /dev/kvm can be opened; skips loudly if not (fails under
/// `CI=true`).
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            crate::skip(&format!("{test}: /dev/kvm is not usable ({e})"));
            false
        }
    }
}
