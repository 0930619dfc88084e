//! The boot GDT and the conversion of its descriptors into KVM segments.
//!
//! Linux's boot protocols expect `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18,
//! so the boot GDT keeps the first two entries null and puts code at index 2,
//! data at 3 and a TSS at 4. The same layout serves 32-bit (PVH) and 64-bit
//! entry; only the code descriptor's L/D bits differ.

use kvm_bindings::kvm_segment;

/// Selector of the boot code segment.
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the boot data segment (DS, ES, FS, GS, SS).
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the boot TSS.
pub const TSS_SELECTOR: u16 = 0x20;

/// Which code segment the boot GDT carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GdtMode {
    /// 64-bit code segment (L=1).
    Long,
    /// 32-bit flat code segment (D=1).
    Protected32,
}

/// Encodes a segment descriptor. `flags` holds the access byte in bits 0..8
/// and the G/D/L/AVL nibble in bits 12..16 (the layout of Linux's GDT_ENTRY).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// The boot GDT for `mode`: null, null, code, data, TSS.
pub fn boot_gdt(mode: GdtMode) -> [u64; 5] {
    let code = match mode {
        GdtMode::Long => gdt_entry(0xa09b, 0, 0xfffff),
        GdtMode::Protected32 => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        0,
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// The KVM segment register value that loading descriptor `entry` at GDT
/// index `index` would produce.
pub fn segment_from_entry(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = (entry >> 55) & 1 == 1;
    let limit = if granular {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_architecture_manual() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(
            gdt_entry(0xc09b, 0x1234_5678, 0xabcde),
            0x12ca_9b34_5678_bcde
        );
    }

    #[test]
    fn long_mode_code_segment() {
        let gdt = boot_gdt(GdtMode::Long);
        let cs = segment_from_entry(gdt[2], 2);
        assert_eq!(cs.selector, CODE_SELECTOR);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_entry(gdt[3], 3);
        assert_eq!((ds.selector, ds.type_, ds.db), (DATA_SELECTOR, 3, 1));
        let tr = segment_from_entry(gdt[4], 4);
        assert_eq!((tr.selector, tr.type_, tr.s), (TSS_SELECTOR, 0xb, 0));
    }

    #[test]
    fn protected_mode_code_segment() {
        let cs = segment_from_entry(boot_gdt(GdtMode::Protected32)[2], 2);
        assert_eq!((cs.l, cs.db, cs.base, cs.limit), (0, 1, 0, 0xffff_ffff));
    }
}
