//! The Intel MultiProcessor Specification 1.4 table, so an SMP guest finds
//! its CPUs, the IOAPIC and the ISA interrupt routing without ACPI.
//!
//! The floating pointer structure and the configuration table go together in
//! the EBDA (found by Linux's scan of the first KiB of the EBDA). The table is
//! serialized by hand, little-endian, rather than through packed structs.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{EBDA_START, IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR};
use crate::error::{Result, VmmError};
use crate::memory::GuestMemoryMmap;

/// Space available for the whole table: the EBDA up to the VGA hole.
const MPTABLE_SPACE: usize = (0xa0000 - EBDA_START) as usize;
/// Interrupts routed through the IOAPIC: every pin, so virtio devices can
/// use GSIs above the 16 ISA ones (as bus IRQs on the ISA bus, edge, high).
const ROUTED_IRQS: u8 = IOAPIC_PINS;
/// MP spec revision 1.4.
const SPEC_REV: u8 = 4;
/// Local APIC version reported for each CPU (integrated APIC).
const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version (82093AA-compatible).
const IOAPIC_VERSION: u8 = 0x11;

// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
// Interrupt types.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
// Processor flags.
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;

/// Size of the floating pointer structure.
pub const MPF_SIZE: usize = 16;
/// Size of the configuration table header.
pub const HEADER_SIZE: usize = 44;
/// Size of a processor entry (all other entries are 8 bytes).
pub const PROCESSOR_ENTRY_SIZE: usize = 20;

/// Most vCPUs whose MP table fits in the EBDA.
pub const MAX_CPUS: u8 =
    ((MPTABLE_SPACE - MPF_SIZE - HEADER_SIZE - 8 * (2 + ROUTED_IRQS as usize + 2))
        / PROCESSOR_ENTRY_SIZE) as u8;

// Room for at least 32 vCPUs.
const _: () = assert!(MAX_CPUS >= 32);

/// Two's-complement checksum byte making `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer structure followed by the configuration
/// table, to be placed at `base`.
pub fn build(base: u64, cpus: u8) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(VmmError::Config(format!(
            "{cpus} vCPUs: the MP table supports 1 to {MAX_CPUS}"
        )));
    }
    let ioapic_id = cpus; // IDs 0..cpus belong to the local APICs.
    let mut entries: Vec<u8> = Vec::new();
    for id in 0..cpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(id);
        entries.push(LAPIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&0x0006_0fb1u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x0000_0201u32.to_le_bytes()); // FPU | APIC
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    for irq in 0..ROUTED_IRQS {
        // Type, interrupt type, flags (conforms to bus), bus, bus IRQ, IOAPIC, pin.
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
    }
    for (kind, lint) in [(INT_EXTINT, 0u8), (INT_NMI, 1u8)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xff, lint]);
    }
    let entry_count = u16::from(cpus) + 1 + 1 + u16::from(ROUTED_IRQS) + 2;

    let table_len = HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"AMPHI   ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.extend_from_slice(&[0, 0]); // extended checksum, reserved
    debug_assert_eq!(table.len(), HEADER_SIZE);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let table_addr = u32::try_from(base + MPF_SIZE as u64)
        .map_err(|_| VmmError::Boot("MP table above 4 GiB".into()))?;
    let mut out = Vec::with_capacity(MPF_SIZE + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&table_addr.to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(SPEC_REV);
    out.push(0); // checksum, below
    out.extend_from_slice(&[0; 5]); // feature bytes: table present, virtual wire
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    if out.len() > MPTABLE_SPACE {
        return Err(VmmError::Boot(format!(
            "MP table of {} bytes does not fit",
            out.len()
        )));
    }
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs into the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    let bytes = build(EBDA_START, cpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|e| VmmError::Boot(format!("writing the MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_header() {
        let blob = build(EBDA_START, 2).unwrap();
        let (mpf, table) = blob.split_at(MPF_SIZE);
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(sum(mpf), 0);
        assert_eq!(
            u32::from_le_bytes(mpf[4..8].try_into().unwrap()) as u64,
            EBDA_START + 16
        );
        assert_eq!(mpf[8], 1);
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(
            u16::from_le_bytes([table[4], table[5]]) as usize,
            table.len()
        );
        assert_eq!(sum(table), 0);
        assert_eq!(
            u32::from_le_bytes(table[36..40].try_into().unwrap()),
            0xfee0_0000
        );
    }

    #[test]
    fn entries_describe_cpus_ioapic_and_isa_irqs() {
        let cpus = 3;
        let blob = build(EBDA_START, cpus).unwrap();
        let table = &blob[MPF_SIZE..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        let mut at = HEADER_SIZE;
        let mut seen = [0usize; 5];
        let mut bsp = 0;
        for _ in 0..count {
            let kind = table[at];
            seen[kind as usize] += 1;
            match kind {
                ENTRY_PROCESSOR => {
                    assert_eq!(table[at + 1] as usize, seen[0] - 1, "APIC IDs in order");
                    bsp += usize::from(table[at + 3] & CPU_BSP != 0);
                    at += PROCESSOR_ENTRY_SIZE;
                }
                ENTRY_IOAPIC => {
                    assert_eq!(table[at + 1], cpus, "IOAPIC ID follows the CPUs");
                    assert_eq!(
                        u32::from_le_bytes(table[at + 4..at + 8].try_into().unwrap()),
                        0xfec0_0000
                    );
                    at += 8;
                }
                _ => at += 8,
            }
        }
        assert_eq!(at, table.len());
        assert_eq!(seen, [3, 1, 1, usize::from(IOAPIC_PINS), 2]);
        assert_eq!(bsp, 1);
    }

    #[test]
    fn cpu_limits() {
        assert!(build(EBDA_START, 0).is_err());
        assert!(build(EBDA_START, MAX_CPUS).unwrap().len() <= MPTABLE_SPACE);
        assert!(build(EBDA_START, MAX_CPUS + 1).is_err());
    }
}
