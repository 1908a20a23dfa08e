//! Just enough ELF64 to write the nested profile's init and to tell a static
//! binary from a dynamic one.
//!
//! On `kvm_pvm` hosts guest userspace cannot make a single system call, so
//! the only init that keeps such a guest alive is one that never makes one:
//! a `pause; jmp` loop. Writing its bytes here avoids needing an assembler or
//! a cross toolchain on the host.

/// Where the init's single segment is mapped: the traditional x86_64
/// executable base, far above the zero page.
pub const LOAD_ADDR: u64 = 0x40_0000;
/// `pause` (`f3 90`) then `jmp rel8 -4` (`eb fc`) back to the `pause`.
pub const SPIN_CODE: [u8; 4] = [0xf3, 0x90, 0xeb, 0xfc];

const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 0x3e;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PF_X: u32 = 1;
const PF_R: u32 = 4;

/// A static x86_64 executable whose entry point spins in user mode forever.
/// One `PT_LOAD` segment maps the whole file (headers included), which keeps
/// file offsets equal to offsets from [`LOAD_ADDR`].
pub fn spin_init() -> Vec<u8> {
    let code_off = u64::from(EHDR_SIZE + PHDR_SIZE);
    let total = code_off + SPIN_CODE.len() as u64;
    let mut b = Vec::with_capacity(total as usize);
    // e_ident: magic, 64-bit, little endian, version 1, System V ABI.
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&ET_EXEC.to_le_bytes());
    b.extend_from_slice(&EM_X86_64.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // e_version
    b.extend_from_slice(&(LOAD_ADDR + code_off).to_le_bytes()); // e_entry
    b.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&EHDR_SIZE.to_le_bytes());
    b.extend_from_slice(&PHDR_SIZE.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    b.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    b.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    b.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    debug_assert_eq!(b.len(), usize::from(EHDR_SIZE));

    b.extend_from_slice(&PT_LOAD.to_le_bytes());
    b.extend_from_slice(&(PF_R | PF_X).to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    b.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    b.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    b.extend_from_slice(&total.to_le_bytes()); // p_filesz
    b.extend_from_slice(&total.to_le_bytes()); // p_memsz
    b.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    debug_assert_eq!(b.len() as u64, code_off);

    b.extend_from_slice(&SPIN_CODE);
    b
}

/// The header fields this crate cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub elf_type: u16,
    pub machine: u16,
    pub entry: u64,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

impl ElfInfo {
    /// No `PT_INTERP`: the kernel runs it without a dynamic loader, which is
    /// what an init in an otherwise empty rootfs needs.
    pub fn is_static(&self) -> bool {
        !self.segments.iter().any(|s| s.kind == PT_INTERP)
    }

    /// The `PT_LOAD` segment whose memory contains the entry point.
    pub fn entry_segment(&self) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| s.kind == PT_LOAD && s.vaddr <= self.entry && self.entry < s.vaddr + s.memsz)
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Reads a little-endian ELF64 header and its program headers; `None` for
/// anything else or a truncated file.
pub fn parse(b: &[u8]) -> Option<ElfInfo> {
    if b.get(..6)? != [0x7f, b'E', b'L', b'F', 2, 1] {
        return None;
    }
    let phoff = usize::try_from(u64_at(b, 32)?).ok()?;
    let phentsize = usize::from(u16_at(b, 54)?);
    let phnum = usize::from(u16_at(b, 56)?);
    if phentsize < usize::from(PHDR_SIZE) {
        return None;
    }
    let mut segments = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
        segments.push(Segment {
            kind: u32_at(b, p)?,
            flags: u32_at(b, p + 4)?,
            offset: u64_at(b, p + 8)?,
            vaddr: u64_at(b, p + 16)?,
            filesz: u64_at(b, p + 32)?,
            memsz: u64_at(b, p + 40)?,
        });
    }
    Some(ElfInfo {
        elf_type: u16_at(b, 16)?,
        machine: u16_at(b, 18)?,
        entry: u64_at(b, 24)?,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_init_parses_back() {
        let bytes = spin_init();
        assert_eq!(&bytes[..4], b"\x7fELF");
        assert_eq!(bytes.len(), 64 + 56 + 4);
        let info = parse(&bytes).expect("valid ELF");
        assert_eq!(info.elf_type, ET_EXEC);
        assert_eq!(info.machine, 0x3e);
        assert!(info.is_static());
        assert_eq!(info.segments.len(), 1);
        let seg = info
            .entry_segment()
            .expect("entry inside a PT_LOAD segment");
        assert_eq!(seg.flags, PF_R | PF_X);
        assert_eq!(seg.offset, 0);
        assert_eq!(seg.filesz, bytes.len() as u64);
        assert_eq!(seg.memsz, seg.filesz);
        assert_eq!(seg.vaddr % 0x1000, 0);
        // The entry point's bytes in the file are the spin loop.
        let entry_off = (info.entry - seg.vaddr + seg.offset) as usize;
        assert_eq!(&bytes[entry_off..], &SPIN_CODE);
    }

    #[test]
    fn spin_loop_jumps_to_itself() {
        // jmp rel8 is relative to the next instruction: entry + 4 - 4.
        let rel = SPIN_CODE[3] as i8;
        assert_eq!(SPIN_CODE.len() as i64 + i64::from(rel), 0);
    }

    #[test]
    fn rejects_garbage_and_sees_interp() {
        assert_eq!(parse(b"#!/bin/sh\n"), None);
        assert_eq!(parse(&spin_init()[..70]), None);
        let mut dynamic = spin_init();
        dynamic[64..68].copy_from_slice(&PT_INTERP.to_le_bytes());
        let info = parse(&dynamic).expect("still parses");
        assert!(!info.is_static());
        assert_eq!(info.entry_segment(), None);
    }
}
