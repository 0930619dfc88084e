//! What amphi reads of ELF64 kernel images beyond what linux-loader does:
//! the contents of one type of entry of a header table (the PVM check's
//! string tables, the loader's note segments), and the notes of a note
//! segment (also `amphi kernel`'s probe). Every offset and size comes from
//! the file and is bounds-checked; nothing here panics on a malformed file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// `PT_NOTE`: a program header for a segment of notes.
pub const PT_NOTE: u32 = 4;
/// `SHT_STRTAB`: a section header for a string table.
pub const SHT_STRTAB: u32 = 3;

/// One of an ELF64 file's two header tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// The section headers (`e_shoff`).
    Sections,
    /// The program headers (`e_phoff`).
    Segments,
}

/// Where a table's fields are: in the ELF header its offset, entry size and
/// entry count; in an entry (at least `entry` bytes) its type, file offset
/// and size in the file.
struct Layout {
    off: usize,
    entsize: usize,
    num: usize,
    entry: usize,
    kind: usize,
    offset: usize,
    size: usize,
}

impl Table {
    fn layout(self) -> Layout {
        match self {
            Table::Sections => Layout {
                off: 0x28,
                entsize: 0x3a,
                num: 0x3c,
                entry: 64,
                kind: 0x04,
                offset: 0x18,
                size: 0x20,
            },
            Table::Segments => Layout {
                off: 0x20,
                entsize: 0x36,
                num: 0x38,
                entry: 56,
                kind: 0x00,
                offset: 0x08,
                size: 0x20,
            },
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
}

/// The contents of every entry of `table` whose type is `kind` (`SHT_*` or
/// `PT_*`), in table order, skipping entries larger than `max` bytes; an
/// empty list when the file has no such table, `None` when it is not an
/// ELF64 file. A header or entry outside the file is an error.
pub fn contents(
    file: &File,
    table: Table,
    kind: u32,
    max: u64,
) -> io::Result<Option<Vec<Vec<u8>>>> {
    let mut ehdr = [0u8; 64];
    if file.read_exact_at(&mut ehdr, 0).is_err() || &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 {
        return Ok(None);
    }
    let l = table.layout();
    let off = u64_at(&ehdr, l.off);
    let entsize = u64::from(u16_at(&ehdr, l.entsize));
    let num = u64::from(u16_at(&ehdr, l.num));
    if off == 0 || entsize < l.entry as u64 {
        return Ok(Some(Vec::new()));
    }
    let mut found = Vec::new();
    let mut entry = vec![0u8; l.entry];
    for i in 0..num {
        let at = i
            .checked_mul(entsize)
            .and_then(|o| o.checked_add(off))
            .ok_or_else(|| io::Error::other("ELF header table out of range"))?;
        file.read_exact_at(&mut entry, at)?;
        if u32_at(&entry, l.kind) != kind {
            continue;
        }
        let (offset, size) = (u64_at(&entry, l.offset), u64_at(&entry, l.size));
        if size > max {
            continue;
        }
        let mut data = vec![0u8; size as usize];
        file.read_exact_at(&mut data, offset)?;
        found.push(data);
    }
    Ok(Some(found))
}

/// One note of a note segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    /// Its name, with the NUL it is counted with ("Xen\0", "Linux\0").
    pub name: &'a [u8],
    /// Its type.
    pub kind: u32,
    /// Its descriptor.
    pub desc: &'a [u8],
}

/// The notes of a note segment's contents, in order, up to the first one
/// whose header, name or descriptor does not fit in what is left.
pub fn notes(segment: &[u8]) -> impl Iterator<Item = Note<'_>> {
    let mut rest = segment;
    std::iter::from_fn(move || {
        let data = rest;
        let word = |i: usize| -> Option<usize> {
            let w = data.get(i..i + 4)?;
            usize::try_from(u32::from_le_bytes([w[0], w[1], w[2], w[3]])).ok()
        };
        let (namesz, descsz) = (word(0)?, word(4)?);
        let kind = u32::try_from(word(8)?).ok()?;
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = name_end.checked_next_multiple_of(4)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let note = Note {
            name: data.get(12..name_end)?,
            kind,
            desc: data.get(desc_start..desc_end)?,
        };
        rest = desc_end
            .checked_next_multiple_of(4)
            .and_then(|next| data.get(next..))
            .unwrap_or_default();
        Some(note)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(namesz: u32, name: &[u8], kind: u32, descsz: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend(namesz.to_le_bytes());
        n.extend(descsz.to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.extend(desc);
        n
    }

    #[test]
    fn notes_are_walked_in_order_and_stop_at_the_first_that_does_not_fit() {
        let xen = note(4, b"Xen\0", 18, 4, &[1, 0, 0, 0]);
        let linux = note(6, b"Linux\0\0\0", 0x100, 1, &[7, 0, 0, 0]);
        let both = [xen.clone(), linux.clone()].concat();
        let got: Vec<Note> = notes(&both).collect();
        assert_eq!(
            got,
            [
                Note {
                    name: b"Xen\0",
                    kind: 18,
                    desc: &[1, 0, 0, 0]
                },
                Note {
                    name: b"Linux\0",
                    kind: 0x100,
                    desc: &[7]
                },
            ]
        );
        // A descriptor or name running past the end ends the walk there.
        let mut long_desc = note(4, b"Xen\0", 18, u32::MAX, &[]);
        long_desc.extend(&linux);
        assert_eq!(notes(&long_desc).count(), 0);
        assert_eq!(notes(&note(u32::MAX, b"Linux\0\0\0", 1, 0, &[])).count(), 0);
        assert_eq!(notes(&[xen.clone(), vec![1, 2, 3]].concat()).count(), 1);
        assert_eq!(notes(&[]).count(), 0);
    }

    #[test]
    fn contents_reads_one_kind_of_entry_within_bounds() {
        use std::io::Write;
        // An ELF64 header, two program headers (a PT_NOTE of 8 bytes, a
        // PT_LOAD), then the note bytes.
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let data_at = 64 + 2 * 56;
        for kind in [PT_NOTE, 1] {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&kind.to_le_bytes());
            ph[8..16].copy_from_slice(&(data_at as u64).to_le_bytes());
            ph[32..40].copy_from_slice(&8u64.to_le_bytes());
            elf.extend(ph);
        }
        elf.extend(b"NOTEDATA");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&elf).unwrap();
        let file = f.reopen().unwrap();
        assert_eq!(
            contents(&file, Table::Segments, PT_NOTE, 64).unwrap(),
            Some(vec![b"NOTEDATA".to_vec()])
        );
        // Larger than the bound: skipped; no section table: none.
        assert_eq!(
            contents(&file, Table::Segments, PT_NOTE, 7).unwrap(),
            Some(vec![])
        );
        assert_eq!(
            contents(&file, Table::Sections, SHT_STRTAB, 64).unwrap(),
            Some(vec![])
        );
        // A segment past the end of the file is an error, not a panic.
        elf[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut g = tempfile::NamedTempFile::new().unwrap();
        g.write_all(&elf).unwrap();
        assert!(contents(&g.reopen().unwrap(), Table::Segments, PT_NOTE, 64).is_err());
        // Not ELF64.
        let mut h = tempfile::NamedTempFile::new().unwrap();
        h.write_all(b"MZ not an ELF").unwrap();
        assert_eq!(
            contents(&h.reopen().unwrap(), Table::Segments, PT_NOTE, 64).unwrap(),
            None
        );
    }
}
