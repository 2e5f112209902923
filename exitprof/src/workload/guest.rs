//! The guest program: 32-bit protected-mode code (paging off, flat
//! segments) that reads its counts from a parameter block and performs
//! exactly that many exits of each kind, then writes the done port.
//!
//! The code is assembled here by a tiny emitter: every instruction is one
//! method with its encoding spelled out, so the bytes can be checked
//! against the SDM without an assembler.

/// Guest-physical address of the code.
pub const CODE_GPA: u64 = 0x1000;
/// Guest-physical address of the parameter block ([`Params`]).
pub const PARAMS_GPA: u32 = 0x500;
/// The port the guest writes once when it is done. Not a workload port:
/// its one `out` is not counted with the workload's port I/O.
pub const DONE_PORT: u16 = 0xf4;
/// Byte the guest writes with `out`.
pub const OUT_BYTE: u8 = 0x5a;
/// The port the guest reports each query's eax, ebx, ecx and edx on, with
/// four 4-byte `out`s. Not a workload port either.
pub const REPORT_PORT: u16 = 0xf0;
/// Guest-physical address of the query list (12 bytes per [`Query`]).
pub const QUERIES_GPA: u32 = 0x600;
/// Most queries one run takes (they must fit below [`CODE_GPA`]).
#[expect(
    clippy::cast_possible_truncation,
    reason = "constants below 4 KiB, checked at compile time"
)]
pub const MAX_QUERIES: usize = (CODE_GPA as usize - QUERIES_GPA as usize) / 12;

/// One instruction whose result registers the guest reports, for reading
/// a hypervisor's answers (e.g. the exitprof CPUID leaves of a patched
/// KVM) from inside the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// `cpuid` with eax = `leaf`, ecx = `subleaf`.
    Cpuid {
        /// eax.
        leaf: u32,
        /// ecx.
        subleaf: u32,
    },
    /// The vendor's hypercall instruction with eax = `nr` (ebx = edx = 0).
    Hypercall {
        /// eax.
        nr: u32,
    },
}

impl Query {
    /// The list entry: kind (0 cpuid, 1 hypercall), eax, ecx.
    #[must_use]
    pub fn to_bytes(self) -> [u8; 12] {
        let (kind, eax, ecx) = match self {
            Self::Cpuid { leaf, subleaf } => (0u32, leaf, subleaf),
            Self::Hypercall { nr } => (1, nr, 0),
        };
        let mut b = [0; 12];
        b[..4].copy_from_slice(&kind.to_le_bytes());
        b[4..8].copy_from_slice(&eax.to_le_bytes());
        b[8..].copy_from_slice(&ecx.to_le_bytes());
        b
    }
}

/// The parameter block: little-endian u32 at `PARAMS_GPA + 4 * index`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// CPUID count, leaf, subleaf.
    pub cpuid: (u32, u32, u32),
    /// Port-I/O count (each: one `out` and one `in`) and port.
    pub pio: (u32, u32),
    /// MMIO count (each: one 4-byte write and one read) and address.
    pub mmio: (u32, u32),
    /// MSR count (each: one `rdmsr` and one `wrmsr`) and index.
    pub msr: (u32, u32),
    /// Hypercall count and number (rax).
    pub hypercall: (u32, u32),
    /// HLT count.
    pub hlt: u32,
    /// Paging rounds: each writes CR3, does one INVLPG and touches
    /// [`TOUCHED_PAGES`] pages (needs paging on, see [`page_tables`]).
    pub paging: u32,
    /// Entries of the query list at [`QUERIES_GPA`].
    pub queries: u32,
}

impl Params {
    /// The block's bytes.
    #[must_use]
    pub fn to_bytes(self) -> Vec<u8> {
        [
            self.cpuid.0,
            self.cpuid.1,
            self.cpuid.2,
            self.pio.0,
            self.pio.1,
            self.mmio.0,
            self.mmio.1,
            self.msr.0,
            self.msr.1,
            self.hypercall.0,
            self.hypercall.1,
            self.hlt,
            self.paging,
            self.queries,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

/// Guest-physical address of the page directory (32-bit, 4 KiB pages).
pub const PAGE_DIRECTORY_GPA: u32 = 0x8_0000;
/// First page the paging rounds touch.
pub const TOUCH_GPA: u32 = 0x2_0000;
/// Pages each paging round touches (below the page tables).
pub const TOUCHED_PAGES: u32 = 64;

/// 32-bit page tables, identity-mapping guest RAM (`ram_bytes`) and the
/// 4 KiB page of `mmio_gpa`: `(gpa, bytes)` pieces for guest memory.
/// The page directory is at [`PAGE_DIRECTORY_GPA`], its tables follow it.
#[must_use]
pub fn page_tables(ram_bytes: u32, mmio_gpa: u32) -> Vec<(u32, Vec<u8>)> {
    const PRESENT_WRITABLE: u32 = 0b11;
    let low_table = PAGE_DIRECTORY_GPA + 0x1000;
    let mmio_table = PAGE_DIRECTORY_GPA + 0x2000;
    let mut directory = vec![0u32; 1024];
    directory[0] = low_table | PRESENT_WRITABLE;
    let mmio_dir = (mmio_gpa >> 22) as usize;
    directory[mmio_dir] = mmio_table | PRESENT_WRITABLE;
    let low: Vec<u32> = (0..1024)
        .map(|i| {
            let addr = i << 12;
            if addr < ram_bytes {
                addr | PRESENT_WRITABLE
            } else {
                0
            }
        })
        .collect();
    let mut mmio = vec![0u32; 1024];
    mmio[((mmio_gpa >> 12) & 0x3ff) as usize] = (mmio_gpa & !0xfff) | PRESENT_WRITABLE;
    let bytes = |v: Vec<u32>| v.iter().flat_map(|e| e.to_le_bytes()).collect();
    vec![
        (PAGE_DIRECTORY_GPA, bytes(directory)),
        (low_table, bytes(low)),
        (mmio_table, bytes(mmio)),
    ]
}

/// Address of parameter `index` (see [`Params::to_bytes`]).
const fn param(index: u32) -> u32 {
    PARAMS_GPA + 4 * index
}

/// The hypercall instruction of the host's vendor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Intel `vmcall`.
    Vmcall,
    /// AMD `vmmcall`.
    Vmmcall,
}

/// Registers of the 32-bit encodings used here (`ModRM` `reg` numbers).
#[derive(Clone, Copy)]
#[repr(u8)]
enum Reg {
    Eax = 0,
    Ecx = 1,
    Edx = 2,
    Esi = 6,
    Edi = 7,
}

#[derive(Default)]
struct Asm {
    code: Vec<u8>,
}

impl Asm {
    /// `mov r32, [disp32]`: 8B /r, mod=00 rm=101.
    fn load(&mut self, reg: Reg, addr: u32) {
        self.code.extend([0x8b, (reg as u8) << 3 | 0b101]);
        self.code.extend(addr.to_le_bytes());
    }
    /// `test esi, esi; jz rel32` with the target patched by `end_skip`.
    fn skip_if_zero(&mut self) -> usize {
        self.code.extend([0x85, 0xf6, 0x0f, 0x84, 0, 0, 0, 0]);
        self.code.len()
    }
    fn end_skip(&mut self, at: usize) {
        let rel = i32::try_from(self.code.len() - at).expect("small program");
        self.code[at - 4..at].copy_from_slice(&rel.to_le_bytes());
    }
    /// `dec esi; jnz rel8` back to `top`.
    fn loop_to(&mut self, top: usize) {
        self.code.extend([0xff, 0xce]);
        let rel =
            i64::try_from(top).expect("small") - i64::try_from(self.code.len() + 2).expect("small");
        self.code.extend([
            0x75,
            i8::try_from(rel)
                .expect("loop body under 128 bytes")
                .to_le_bytes()[0],
        ]);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.code.extend_from_slice(b);
    }
    /// `esi = [count]`; if non-zero, `body` runs `esi` times.
    fn repeat(&mut self, count: u32, body: impl Fn(&mut Self)) {
        self.load(Reg::Esi, count);
        let skip = self.skip_if_zero();
        let top = self.code.len();
        body(self);
        self.loop_to(top);
        self.end_skip(skip);
    }
}

/// Assembles the program.
#[must_use]
pub fn program(hypercall: Hypercall) -> Vec<u8> {
    let mut a = Asm::default();
    a.repeat(param(0), |a| {
        a.load(Reg::Eax, param(1));
        a.load(Reg::Ecx, param(2));
        a.bytes(&[0x0f, 0xa2]); // cpuid
    });
    a.load(Reg::Edx, param(4));
    a.repeat(param(3), |a| {
        a.bytes(&[0xb0, OUT_BYTE]); // mov al, OUT_BYTE
        a.bytes(&[0xee]); // out dx, al
        a.bytes(&[0xec]); // in al, dx
    });
    a.load(Reg::Edi, param(6));
    a.repeat(param(5), |a| {
        a.bytes(&[0x89, 0x07]); // mov [edi], eax
        a.bytes(&[0x8b, 0x07]); // mov eax, [edi]
    });
    a.repeat(param(7), |a| {
        a.load(Reg::Ecx, param(8));
        a.bytes(&[0x0f, 0x32]); // rdmsr
        a.bytes(&[0x0f, 0x30]); // wrmsr (writes back what it read)
    });
    a.repeat(param(9), |a| {
        a.load(Reg::Eax, param(10));
        a.bytes(match hypercall {
            Hypercall::Vmcall => &[0x0f, 0x01, 0xc1],
            Hypercall::Vmmcall => &[0x0f, 0x01, 0xd9],
        });
    });
    a.repeat(param(11), |a| a.bytes(&[0xf4])); // hlt
    a.repeat(param(12), |a| {
        a.bytes(&[0x0f, 0x20, 0xd8]); // mov eax, cr3
        a.bytes(&[0x0f, 0x22, 0xd8]); // mov cr3, eax (flushes the TLB)
        a.bytes(&[0x0f, 0x01, 0x3d]); // invlpg [TOUCH_GPA]
        a.bytes(&TOUCH_GPA.to_le_bytes());
        a.bytes(&[0xbf]); // mov edi, TOUCH_GPA
        a.bytes(&TOUCH_GPA.to_le_bytes());
        a.bytes(&[0xb9]); // mov ecx, TOUCHED_PAGES
        a.bytes(&TOUCHED_PAGES.to_le_bytes());
        // touch: mov [edi], eax; add edi, 0x1000; dec ecx; jnz touch
        a.bytes(&[
            0x89, 0x07, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00, 0xff, 0xc9, 0x75, 0xf4,
        ]);
    });
    a.bytes(&[0xbf]); // mov edi, QUERIES_GPA
    a.bytes(&QUERIES_GPA.to_le_bytes());
    a.repeat(param(13), |a| {
        let report = u8::try_from(REPORT_PORT).expect("8-bit port");
        a.bytes(&[0x8b, 0x47, 0x04]); // mov eax, [edi+4]
        a.bytes(&[0x8b, 0x4f, 0x08]); // mov ecx, [edi+8]
        a.bytes(&[0x83, 0x3f, 0x00]); // cmp dword [edi], 0
        a.bytes(&[0x75, 0x04]); // jne hypercall
        a.bytes(&[0x0f, 0xa2]); // cpuid
        a.bytes(&[0xeb, 0x07]); // jmp report
        a.bytes(&[0x31, 0xdb, 0x31, 0xd2]); // hypercall: xor ebx, ebx; xor edx, edx
        a.bytes(match hypercall {
            Hypercall::Vmcall => &[0x0f, 0x01, 0xc1],
            Hypercall::Vmmcall => &[0x0f, 0x01, 0xd9],
        });
        a.bytes(&[0xe7, report]); // report: out REPORT_PORT, eax
        a.bytes(&[0x89, 0xd8, 0xe7, report]); // mov eax, ebx; out
        a.bytes(&[0x89, 0xc8, 0xe7, report]); // mov eax, ecx; out
        a.bytes(&[0x89, 0xd0, 0xe7, report]); // mov eax, edx; out
        a.bytes(&[0x83, 0xc7, 0x0c]); // add edi, 12
    });
    a.bytes(&[0xe6, u8::try_from(DONE_PORT).expect("8-bit port")]); // out DONE_PORT, al
    a.bytes(&[0xeb, 0xfe]); // jmp $ (never reached: the VMM stops)
    a.code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_block_encoding() {
        let code = program(Hypercall::Vmmcall);
        // mov esi, [0x500]; test esi, esi; jz +N
        assert_eq!(&code[..8], &[0x8b, 0x35, 0x00, 0x05, 0, 0, 0x85, 0xf6]);
        assert_eq!(&code[8..10], &[0x0f, 0x84]);
        let skip = i32::from_le_bytes(code[10..14].try_into().unwrap());
        // body: mov eax,[0x504] (6) mov ecx,[0x508] (6) cpuid (2) dec esi (2) jnz (2)
        assert_eq!(skip, 18);
        assert_eq!(&code[14..20], &[0x8b, 0x05, 0x04, 0x05, 0, 0]);
        assert_eq!(&code[20..26], &[0x8b, 0x0d, 0x08, 0x05, 0, 0]);
        assert_eq!(&code[26..28], &[0x0f, 0xa2]);
        assert_eq!(&code[28..30], &[0xff, 0xce]);
        // jnz back to the body's start (14) from 32: -18
        assert_eq!(&code[30..32], &[0x75, 0xee]);
    }

    #[test]
    fn ends_with_the_done_port() {
        let code = program(Hypercall::Vmcall);
        assert_eq!(&code[code.len() - 4..], &[0xe6, 0xf4, 0xeb, 0xfe]);
        assert!(code.windows(3).any(|w| w == [0x0f, 0x01, 0xc1]));
        assert!(!code.windows(3).any(|w| w == [0x0f, 0x01, 0xd9]));
    }

    #[test]
    fn page_tables_map_ram_and_the_mmio_page() {
        let pieces = page_tables(1 << 20, 0xd000_0000);
        let entry = |piece: usize, i: usize| {
            u32::from_le_bytes(pieces[piece].1[i * 4..i * 4 + 4].try_into().unwrap())
        };
        assert_eq!(pieces[0].0, 0x8_0000);
        assert_eq!(entry(0, 0), 0x8_1003);
        assert_eq!(entry(0, 0x340), 0x8_2003, "0xd0000000 >> 22");
        assert_eq!(entry(1, 0x20), 0x2_0003);
        assert_eq!(entry(1, 0xff), 0xf_f003, "the last page of 1 MiB");
        assert_eq!(entry(1, 0x100), 0, "beyond RAM");
        assert_eq!(entry(2, 0), 0xd000_0003);
    }

    #[test]
    fn touch_loop_jumps_back_to_its_start() {
        // The inner loop is 12 bytes; jnz -12 lands on `mov [edi], eax`.
        let code = program(Hypercall::Vmmcall);
        let at = code
            .windows(4)
            .position(|w| w == [0x89, 0x07, 0x81, 0xc7])
            .unwrap();
        assert_eq!(&code[at + 10..at + 12], &[0x75, 0xf4]);
    }

    #[test]
    fn query_block_branches_land_on_their_targets() {
        let code = program(Hypercall::Vmmcall);
        let at = code
            .windows(3)
            .position(|w| w == [0x83, 0x3f, 0x00])
            .unwrap();
        // jne +4 skips `cpuid; jmp` onto `xor ebx, ebx`.
        assert_eq!(&code[at + 3..at + 5], &[0x75, 0x04]);
        assert_eq!(&code[at + 9..at + 11], &[0x31, 0xdb]);
        // jmp +7 skips the hypercall path onto `out 0xf0, eax`.
        assert_eq!(&code[at + 7..at + 9], &[0xeb, 0x07]);
        assert_eq!(&code[at + 16..at + 18], &[0xe7, 0xf0]);
        assert_eq!(
            Query::Hypercall { nr: 0x283 }.to_bytes(),
            [1, 0, 0, 0, 0x83, 2, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn params_layout() {
        let p = Params {
            cpuid: (1, 2, 3),
            hlt: 9,
            ..Params::default()
        };
        let b = p.to_bytes();
        assert_eq!(b.len(), 56);
        assert_eq!(&b[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&b[44..48], &[9, 0, 0, 0]);
    }
}
