//! Booting the Debian kernel through Linux's PVH entry, for Bochs: the
//! uncompressed kernel taken out of the bzImage once, and a raw disk that
//! holds the boot loader of `pvhboot.S`, its table, the kernel's non-zero
//! parts and the initramfs.
//!
//! The bzImage's own stub spends about 40 s of Bochs's time decompressing
//! 66 MB of XZ; the host does it in a second, and the loader copies the
//! 34 MB that are not zeros in about a second.
use std::{
    fs,
    io::{Read as _, Write as _},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

/// Where the BIOS loads the first sector, and so the loader.
const LOAD_ADDRESS: u32 = 0x7c00;
/// The loader's sectors: its code, then the table at [`TABLE`].
const LOADER_SECTORS: u32 = 16;
/// Offset of the table in the loader (and in the disk).
const TABLE: usize = 0x1000;
/// Load entries the table has room for.
const MAX_LOADS: usize = 15;
/// Offsets in the table (see pvhboot.S).
const START_INFO: usize = 0x100;
const MODLIST: usize = 0x180;
const CMDLINE: usize = 0x200;
const MEMMAP: usize = 0x400;
/// `XEN_HVM_START_MAGIC_VALUE`.
const START_MAGIC: u32 = 0x336e_c578;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point.
const NOTE_PHYS32_ENTRY: u32 = 18;
/// The granule of the zero runs the loader skips (RAM starts zeroed, and
/// the kernel clears its own bss), and the shortest run worth a new load.
const BLOCK: usize = 64 << 10;
const MIN_GAP: usize = 1 << 20;
/// Sector size, and the geometry Bochs is told (heads, sectors/track).
const SECTOR: usize = 512;
pub const HEADS: u64 = 16;
pub const SECTORS_PER_TRACK: u64 = 63;

/// The kernel inside a bzImage: the payload its setup header points at,
/// decompressed by the host's `xz`.
///
/// # Errors
/// When the file is no bzImage with an XZ payload or `xz` fails.
pub fn vmlinux_of(bzimage: &[u8]) -> anyhow::Result<Vec<u8>> {
    ensure!(
        bzimage.get(0x202..0x206) == Some(b"HdrS"),
        "no Linux boot header (HdrS)"
    );
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = u32_at(bzimage, 0x248)? as usize;
    let length = u32_at(bzimage, 0x24c)? as usize;
    let start = (setup_sects + 1) * SECTOR + offset;
    let payload = bzimage
        .get(start..start + length)
        .context("the payload lies outside the bzImage")?;
    ensure!(
        payload.starts_with(b"\xfd7zXZ\0"),
        "the kernel's payload is not XZ-compressed (CONFIG_KERNEL_XZ)"
    );
    // The payload ends with the uncompressed size (xzkern_with_size),
    // which is no XZ: xz is given the stream without it.
    let (stream, size) = payload.split_at(payload.len() - 4);
    let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
    let mut xz = Command::new("xz")
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run xz (xz-utils)")?;
    let mut stdin = xz.stdin.take().expect("piped");
    let stream = stream.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&stream));
    let mut out = Vec::new();
    xz.stdout.take().expect("piped").read_to_end(&mut out)?;
    let _ = writer.join();
    let status = xz.wait()?;
    ensure!(
        status.success() && out.starts_with(b"\x7fELF") && out.len() == size,
        "xz ({status}) gave {} bytes, not the {size} byte ELF kernel the bzImage announces",
        out.len()
    );
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> anyhow::Result<u16> {
    let s = b.get(at..at + 2).context("truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> anyhow::Result<u32> {
    let s = b.get(at..at + 4).context("truncated")?;
    Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], at: usize) -> anyhow::Result<usize> {
    let s = b.get(at..at + 8).context("truncated")?;
    usize::try_from(u64::from_le_bytes(s.try_into().expect("8 bytes"))).context("too large")
}

/// The kernel as the loader places it.
#[derive(Debug, PartialEq, Eq)]
pub struct Image {
    /// The PVH entry (physical).
    pub entry: u32,
    /// Physical address of the first byte of [`Image::bytes`].
    pub base: usize,
    /// Memory from `base` to the end of the last segment (zeros where no
    /// segment has file bytes).
    pub bytes: Vec<u8>,
}

impl Image {
    /// Parses an ELF64 `vmlinux`: its `PT_LOAD` segments at their physical
    /// addresses, and the PVH entry from its Xen notes.
    ///
    /// # Errors
    /// When it is no ELF64 kernel with a PVH entry.
    pub fn parse(elf: &[u8]) -> anyhow::Result<Self> {
        ensure!(
            elf.starts_with(b"\x7fELF\x02\x01"),
            "not a little-endian ELF64 file"
        );
        let phoff = u64_at(elf, 0x20)?;
        let (phentsize, phnum) = (usize::from(u16_at(elf, 0x36)?), u16_at(elf, 0x38)?);
        let mut segments = Vec::new();
        let mut entry = None;
        for i in 0..usize::from(phnum) {
            let ph = phoff + i * phentsize;
            let (kind, offset) = (u32_at(elf, ph)?, u64_at(elf, ph + 8)?);
            let (paddr, filesz, memsz) = (
                u64_at(elf, ph + 0x18)?,
                u64_at(elf, ph + 0x20)?,
                u64_at(elf, ph + 0x28)?,
            );
            let data = elf
                .get(offset..offset + filesz)
                .context("a segment lies outside the file")?;
            match kind {
                1 => segments.push((paddr, data, memsz)),
                4 => entry = entry.or(pvh_entry(data)?),
                _ => {}
            }
        }
        let entry = entry.context("the kernel has no PVH entry (CONFIG_PVH)")?;
        let base = segments
            .iter()
            .map(|s| s.0)
            .min()
            .context("no PT_LOAD segment")?;
        let end = segments.iter().map(|s| s.0 + s.2).max().unwrap_or(base);
        let mut bytes = vec![0; end - base];
        for (paddr, data, _) in segments {
            bytes[paddr - base..paddr - base + data.len()].copy_from_slice(data);
        }
        Ok(Self { entry, base, bytes })
    }

    /// The parts worth copying: runs of [`BLOCK`]s with a non-zero byte,
    /// merged across gaps shorter than [`MIN_GAP`], as (start, end)
    /// offsets into [`Image::bytes`].
    fn runs(&self) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for start in (0..self.bytes.len()).step_by(BLOCK) {
            let end = (start + BLOCK).min(self.bytes.len());
            if self.bytes[start..end].iter().all(|&b| b == 0) {
                continue;
            }
            match runs.last_mut() {
                Some(last) if start - last.1 < MIN_GAP => last.1 = end,
                _ => runs.push((start, end)),
            }
        }
        runs
    }
}

/// The PVH entry of a note segment, if it holds Xen's
/// `XEN_ELFNOTE_PHYS32_ENTRY`.
fn pvh_entry(notes: &[u8]) -> anyhow::Result<Option<u32>> {
    let align = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let (namesz, descsz) = (u32_at(notes, at)? as usize, u32_at(notes, at + 4)? as usize);
        let kind = u32_at(notes, at + 8)?;
        let name = notes.get(at + 12..at + 12 + namesz).context("note name")?;
        let desc = at + 12 + align(namesz);
        if name == b"Xen\0" && kind == NOTE_PHYS32_ENTRY {
            return Ok(Some(u32_at(notes, desc)?));
        }
        at = desc + align(descsz);
    }
    Ok(None)
}

/// Writes the boot disk to `out`: `loader` (the assembled pvhboot.S,
/// exactly [`TABLE`] bytes), its table, the kernel's runs and the
/// initramfs at `initrd` (placed above the kernel). Returns the disk's
/// cylinders (of [`HEADS`] x [`SECTORS_PER_TRACK`]) and the highest
/// physical address it fills.
///
/// # Errors
/// When the loader has the wrong size, something does not fit, or a
/// file cannot be written.
pub fn write_disk(
    loader: &[u8],
    kernel: &Image,
    initrd: &Path,
    cmdline: &str,
    out: &Path,
) -> anyhow::Result<(u64, u64)> {
    ensure!(
        loader.len() == TABLE && loader[510..512] == [0x55, 0xaa],
        "the boot loader is {} bytes without a boot signature (expected {TABLE} with one)",
        loader.len()
    );
    ensure!(
        cmdline.len() < MEMMAP - CMDLINE,
        "kernel command line too long"
    );
    let runs = kernel.runs();
    ensure!(runs.len() < MAX_LOADS, "the kernel has too many parts");
    let initrd_len = fs::metadata(initrd)
        .with_context(|| format!("reading {}", initrd.display()))?
        .len();
    // Above the kernel, 2 MiB aligned.
    let initrd_at = (kernel.base + kernel.bytes.len()).next_multiple_of(2 << 20);
    let mut head = vec![0; LOADER_SECTORS as usize * SECTOR];
    head[..TABLE].copy_from_slice(loader);
    let mut sector = u64::from(LOADER_SECTORS);
    let mut loads = Vec::new();
    for &(start, end) in &runs {
        loads.push((sector, end - start, kernel.base + start));
        sector += ((end - start).div_ceil(SECTOR)) as u64;
    }
    let initrd_len = usize::try_from(initrd_len)?;
    loads.push((sector, initrd_len, initrd_at));
    let table = &mut head[TABLE..];
    let put32 = |t: &mut [u8], at: usize, v: u64| -> anyhow::Result<()> {
        t[at..at + 4].copy_from_slice(&u32::try_from(v).context("over 4 GiB")?.to_le_bytes());
        Ok(())
    };
    let put64 = |t: &mut [u8], at: usize, v: u64| t[at..at + 8].copy_from_slice(&v.to_le_bytes());
    table[..4].copy_from_slice(b"PVHL");
    put32(table, 4, u64::from(kernel.entry))?;
    put32(table, 8, loads.len() as u64)?;
    for (i, &(first, len, dest)) in loads.iter().enumerate() {
        put32(table, 16 + 16 * i, first)?;
        put32(table, 20 + 16 * i, len.div_ceil(SECTOR) as u64)?;
        put32(table, 24 + 16 * i, dest as u64)?;
    }
    let phys = |offset: usize| u64::from(LOAD_ADDRESS) + (TABLE + offset) as u64;
    put32(table, START_INFO, u64::from(START_MAGIC))?;
    put32(table, START_INFO + 4, 1)?; // version 1: with a memory map
    put32(table, START_INFO + 12, 1)?; // nr_modules: the initramfs
    put64(table, START_INFO + 16, phys(MODLIST));
    put64(table, START_INFO + 24, phys(CMDLINE));
    // rsdp_paddr 0: the kernel finds the BIOS's ACPI tables itself.
    put64(table, START_INFO + 40, phys(MEMMAP));
    put64(table, MODLIST, initrd_at as u64);
    put64(table, MODLIST + 8, initrd_len as u64);
    table[CMDLINE..CMDLINE + cmdline.len()].copy_from_slice(cmdline.as_bytes());
    let mut disk = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    disk.write_all(&head)?;
    let pad = |disk: &mut fs::File, len: usize| {
        disk.write_all(&vec![0; len.next_multiple_of(SECTOR) - len])
    };
    for &(start, end) in &runs {
        disk.write_all(&kernel.bytes[start..end])?;
        pad(&mut disk, end - start)?;
    }
    let copied = std::io::copy(&mut fs::File::open(initrd)?, &mut disk)?;
    ensure!(
        copied == initrd_len as u64,
        "{} changed while copied",
        initrd.display()
    );
    pad(&mut disk, initrd_len)?;
    let cylinder = HEADS * SECTORS_PER_TRACK * SECTOR as u64;
    let size = (sector + initrd_len.div_ceil(SECTOR) as u64) * SECTOR as u64;
    let cylinders = size.div_ceil(cylinder);
    disk.set_len(cylinders * cylinder)?;
    if cylinders > 65_535 {
        bail!("the boot disk is too large for Bochs ({size} bytes)");
    }
    Ok((cylinders, (initrd_at + initrd_len) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small ELF64 with two loadable segments and a PVH note.
    fn elf() -> Vec<u8> {
        let mut e = vec![0u8; 0x400];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let ph =
            |e: &mut Vec<u8>, i: usize, kind: u32, off: u64, paddr: u64, fsz: u64, msz: u64| {
                let at = 0x40 + 56 * i;
                e[at..at + 4].copy_from_slice(&kind.to_le_bytes());
                e[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
                e[at + 0x18..at + 0x20].copy_from_slice(&paddr.to_le_bytes());
                e[at + 0x20..at + 0x28].copy_from_slice(&fsz.to_le_bytes());
                e[at + 0x28..at + 0x30].copy_from_slice(&msz.to_le_bytes());
            };
        ph(&mut e, 0, 1, 0x200, 0x100_0000, 0x10, 0x10);
        ph(&mut e, 1, 1, 0x210, 0x130_0000, 0x10, 0x20_0000);
        // Notes: a GNU one, then Xen's PHYS32_ENTRY.
        let mut notes = Vec::new();
        for (name, kind, desc) in [
            (&b"GNU\0"[..], 3u32, &[1u8, 2, 3, 4][..]),
            (&b"Xen\0"[..], 18, &0x0100_0850u32.to_le_bytes()[..]),
        ] {
            notes.extend_from_slice(&4u32.to_le_bytes());
            notes.extend_from_slice(&u32::try_from(desc.len()).unwrap().to_le_bytes());
            notes.extend_from_slice(&kind.to_le_bytes());
            notes.extend_from_slice(name);
            notes.extend_from_slice(desc);
        }
        ph(
            &mut e,
            2,
            4,
            0x300,
            0,
            notes.len() as u64,
            notes.len() as u64,
        );
        e[0x300..0x300 + notes.len()].copy_from_slice(&notes);
        e[0x200..0x220].fill(0xcc);
        e
    }

    #[test]
    fn segments_at_their_physical_addresses_and_the_entry() {
        let image = Image::parse(&elf()).unwrap();
        assert_eq!(image.entry, 0x0100_0850);
        assert_eq!(image.base, 0x100_0000);
        assert_eq!(image.bytes.len(), 0x50_0000);
        assert_eq!(image.bytes[..0x10], [0xcc; 0x10]);
        assert_eq!(image.bytes[0x30_0000..0x30_0010], [0xcc; 0x10]);
        // Two runs: the gap between them is 3 MiB of zeros.
        assert_eq!(image.runs(), [(0, BLOCK), (0x30_0000, 0x31_0000)]);
        assert!(Image::parse(b"MZ").is_err());
    }

    #[test]
    fn the_disk_carries_the_table_the_loader_reads() {
        let dir = std::env::temp_dir().join(format!("exitprof-pvh-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (initrd, disk) = (dir.join("initrd"), dir.join("disk"));
        fs::write(&initrd, vec![7u8; 1000]).unwrap();
        let mut loader = vec![0x90u8; TABLE];
        loader[510..512].copy_from_slice(&[0x55, 0xaa]);
        let image = Image::parse(&elf()).unwrap();
        let (cylinders, top) =
            write_disk(&loader, &image, &initrd, "console=ttyS0", &disk).unwrap();
        let d = fs::read(&disk).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cylinders, 1);
        assert_eq!(d.len(), 16 * 63 * 512);
        let t = &d[TABLE..];
        assert_eq!(&t[..4], b"PVHL");
        let word = |at: usize| u32_at(t, at).unwrap();
        assert_eq!((word(4), word(8)), (0x0100_0850, 3));
        // Kernel runs from sector 16 on, then the initramfs above the kernel.
        assert_eq!((word(16), word(20), word(24)), (16, 128, 0x100_0000));
        assert_eq!((word(32), word(36), word(40)), (144, 128, 0x130_0000));
        assert_eq!((word(48), word(52), word(56)), (272, 2, 0x160_0000));
        assert_eq!(top, 0x160_0000 + 1000);
        assert_eq!(d[16 * 512], 0xcc);
        assert_eq!(d[272 * 512..272 * 512 + 1000], [7; 1000]);
        assert_eq!(word(START_INFO), START_MAGIC);
        assert_eq!(u64_at(t, START_INFO + 24).unwrap(), 0x7c00 + 0x1200);
        assert_eq!(u64_at(t, MODLIST + 8).unwrap(), 1000);
        assert_eq!(&t[CMDLINE..CMDLINE + 14], b"console=ttyS0\0");
        assert!(write_disk(&loader[..100], &image, &initrd, "", &disk).is_err());
    }
}
