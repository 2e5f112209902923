//! The VMX sandbox's emulator: Bochs 2.7 (Debian's `bochs`), CPU model
//! `corei7_haswell_4770`, which emulates VMX with EPT, VPID and
//! unrestricted guest (QEMU TCG cannot emulate VMX at all).
//!
//! What makes a boot take about 7 s of emulator CPU until `/init` runs,
//! and 10 s until `kvm_intel` is loaded, instead of about 2 minutes with an
//! isolinux CD (measured on these 2-core machines, in emulator CPU
//! seconds: their wall time is noise):
//! - the kernel enters at its PVH entry from our own boot loader
//!   ([`super::pvh`]): no XZ decompression in the guest (-40 s; the BIOS
//!   and the loader take 2 s);
//! - `quiet` (-11 s) and the console at 115200 baud: Bochs times the UART,
//!   and at the default 9600 baud every printed line costs guest time;
//! - `cryptomgr.notests` (the crypto self-tests: 15 s of guest time),
//!   `nopti` and `rodata=off` (no page-table isolation, no W+X walk of
//!   the page tables: -1 s);
//! - an uncompressed initramfs (inflating 5 MB of gzip in the guest costs
//!   1.5 s more than loading 13 MB), `modules.dep` made on the host
//!   (-1.8 s), the modules' signatures cut ([`Signatures::Strip`]: -2.8 s
//!   a load of kvm and kvm-intel);
//! - 512 MB of RAM unless the initramfs needs more (-0.4 s).
//!
//! Tried and left: `ips` (10 to 200 million: the same CPU time),
//! `clock: sync=slowdown` (the same CPU, twice the wall time),
//! `mitigations=off` (-0.2 s, within noise, and it changes what KVM's
//! exit path does), and a saved and restored state (`-r`: resuming takes
//! 1 s, but saving needs a click on the GUI's button, and the guest never
//! read the serial input after a restore).
//!
//! Traps of Bochs 2.7 met on the way: the debugger it is built with stops
//! before the first instruction (`-rc` with `c` continues); the ALSA
//! sound driver crashes it (`sound: driver=dummy`); Debian's build has no
//! `nogui`, and `rfb` listens on every interface, so the display is the
//! `term` library drawing into a log; power-off is a panic.
//!
//! The serial console is a TCP connection to a listener of ours on
//! 127.0.0.1: output arrives as the guest writes it, and the boot ends
//! when `/init`'s last line (`@@EXITPROF exit`) has arrived.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::{
    debian::Kernel,
    initramfs::{self, Signatures},
    pvh,
    scenario::{BootTimes, Scenario, Watchdog, sandbox_dir, tail},
};
use crate::util::{clock_ticks_per_s, cpu_ticks, run};

/// The kernel command line (see the module's documentation).
const CMDLINE: &str =
    "console=ttyS0,115200 quiet loglevel=1 panic=-1 cryptomgr.notests nopti rodata=off";

/// Guest instructions per emulated second: the TSC runs at this rate.
/// (The CPU time of a boot hardly depends on it: idle time is skipped.)
const IPS: u32 = 50_000_000;

/// The boot loader's source.
const LOADER_SOURCE: &str = include_str!("pvhboot.S");

/// `target/sandbox/bochs`.
fn bochs_dir() -> PathBuf {
    sandbox_dir().join("bochs")
}

/// The kernel's ELF image, taken out of `vmlinuz` once per release.
fn vmlinux(kernel: &Kernel) -> anyhow::Result<pvh::Image> {
    let path = bochs_dir().join(format!("vmlinux-{}", kernel.release));
    if !path.exists() {
        let bzimage = fs::read(&kernel.vmlinuz)?;
        let elf = pvh::vmlinux_of(&bzimage)
            .with_context(|| format!("taking the kernel out of {}", kernel.vmlinuz.display()))?;
        let partial = path.with_extension("partial");
        fs::write(&partial, elf)?;
        fs::rename(&partial, &path)?;
    }
    pvh::Image::parse(&fs::read(&path)?).with_context(|| format!("parsing {}", path.display()))
}

/// pvhboot.S assembled (binutils' `as` and `ld`).
fn loader() -> anyhow::Result<Vec<u8>> {
    let dir = bochs_dir();
    let source = dir.join("pvhboot.S");
    fs::write(&source, LOADER_SOURCE)?;
    run(Command::new("as")
        .args(["--32", "-o"])
        .arg(dir.join("pvhboot.o"))
        .arg(&source))
    .context("assembling the boot loader (binutils)")?;
    run(Command::new("ld")
        .args([
            "-m",
            "elf_i386",
            "-Ttext",
            "0x7c00",
            "--oformat",
            "binary",
            "-o",
        ])
        .arg(dir.join("pvhboot.bin"))
        .arg(dir.join("pvhboot.o")))?;
    Ok(fs::read(dir.join("pvhboot.bin"))?)
}

/// The Bochs configuration of one boot.
fn bochsrc(disk: &Path, cylinders: u64, megs: u64, serial_port: u16, log: &Path) -> String {
    format!(
        "megs: {megs}
cpu: model=corei7_haswell_4770, count=1, ips={IPS}, reset_on_triple_fault=0
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
ata0-master: type=disk, path=\"{disk}\", mode=flat, cylinders={cylinders}, heads={heads}, spt={spt}
boot: disk
com1: enabled=1, mode=socket-client, dev=127.0.0.1:{serial_port}
display_library: term
log: {log}
panic: action=fatal
error: action=report
clock: sync=none, time0=utc
sound: driver=dummy
speaker: enabled=0
mouse: enabled=0
parport1: enabled=0
usb_uhci: enabled=0
",
        disk = disk.display(),
        heads = pvh::HEADS,
        spt = pvh::SECTORS_PER_TRACK,
        log = log.display(),
    )
}

/// CPU seconds `pid` has used.
fn cpu_seconds(pid: u32) -> Option<f64> {
    #[expect(clippy::cast_precision_loss, reason = "clock ticks")]
    Some(cpu_ticks(pid)? as f64 / clock_ticks_per_s())
}

/// What the serial reader saw.
#[derive(Default)]
struct Serial {
    /// The whole last line was `/init`'s `@@EXITPROF exit`.
    ended: bool,
    /// Host seconds at `@@EXITPROF booted`.
    booted_s: Option<f64>,
    /// Each section's start (and, last, the end): name, host seconds,
    /// emulator CPU seconds.
    marks: Vec<(String, f64, Option<f64>)>,
}

/// Copies the serial connection into `log`, watching for the markers.
fn read_serial(
    mut stream: TcpStream,
    log: &Path,
    state: &Mutex<Serial>,
    started: Instant,
    pid: u32,
) -> anyhow::Result<()> {
    let mut file = fs::File::create(log)?;
    let mut line = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        file.write_all(&buf[..n])?;
        for &byte in &buf[..n] {
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            let mut seen = state.lock().expect("not poisoned");
            if text.contains("@@EXITPROF booted ") {
                seen.booted_s = Some(started.elapsed().as_secs_f64());
            }
            let mark = text
                .strip_prefix("@@EXITPROF section ")
                .or_else(|| text.starts_with("@@EXITPROF exit ").then_some("end"));
            if let Some(name) = mark {
                let at = started.elapsed().as_secs_f64();
                seen.marks
                    .push((name.trim().to_owned(), at, cpu_seconds(pid)));
            }
            if text.starts_with("@@EXITPROF exit ") {
                seen.ended = true;
            }
            line.clear();
        }
    }
}

/// Kills Bochs on every way out.
struct Emulator(Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `scenario`; the serial console goes to `log`.
pub fn boot(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
    log: &Path,
) -> anyhow::Result<BootTimes> {
    let dir = bochs_dir();
    fs::create_dir_all(&dir)?;
    let image = vmlinux(kernel)?;
    let root = initramfs::root(kernel, exitprof, scenario, Signatures::Strip)?;
    let cpio = dir.join(format!("{}.cpio", scenario.name));
    initramfs::pack(&root, &cpio, false)?;
    let initrd_mb = fs::metadata(&cpio)?.len() >> 20;
    let disk = dir.join(format!("{}.disk", scenario.name));
    let (cylinders, top) = pvh::write_disk(&loader()?, &image, &cpio, CMDLINE, &disk)?;
    fs::remove_file(&cpio)?;
    // The initramfs is unpacked beside itself before its memory is freed;
    // 256 MB for everything else.
    let megs = ((top >> 20) + initrd_mb + 256)
        .next_multiple_of(256)
        .max(512);
    let listener = TcpListener::bind("127.0.0.1:0").context("listening for the serial console")?;
    let port = listener.local_addr()?.port();
    let rc = dir.join(format!("{}.bochsrc", scenario.name));
    let bochs_log = dir.join(format!("{}.bochs.log", scenario.name));
    fs::write(&rc, bochsrc(&disk, cylinders, megs, port, &bochs_log))?;
    let cont = dir.join("continue.rc");
    fs::write(&cont, "c\n")?;
    let out = fs::File::create(dir.join(format!("{}.bochs.out", scenario.name)))?;
    let started = Instant::now();
    let mut cmd = Command::new("bochs");
    cmd.args(["-q", "-unlock", "-f"])
        .arg(&rc)
        .arg("-rc")
        .arg(&cont)
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = cmd
        .spawn()
        .with_context(|| format!("failed to run {cmd:?} (is bochs installed?)"))?;
    let mut emulator = Emulator(child);
    let stream = accept(&listener, &mut emulator, &bochs_log)?;
    let state = Arc::new(Mutex::new(Serial::default()));
    let reader = {
        let (state, log, pid) = (Arc::clone(&state), log.to_owned(), emulator.0.id());
        std::thread::spawn(move || read_serial(stream, &log, &state, started, pid))
    };
    let mut watchdog = Watchdog::new(scenario, log, None, emulator.0.id(), started);
    let result = loop {
        if state.lock().expect("not poisoned").ended {
            break Ok(());
        }
        if let Some(status) = emulator.0.try_wait()? {
            // The reader may still hold the last lines.
            std::thread::sleep(Duration::from_millis(200));
            if state.lock().expect("not poisoned").ended {
                break Ok(());
            }
            break Err(anyhow::anyhow!(
                "Bochs stopped ({status}) before the scenario ended; serial log {}:\n{}\nBochs log {}:\n{}",
                log.display(),
                tail(log),
                bochs_log.display(),
                tail(&bochs_log)
            ));
        }
        if let Err(stalled) = watchdog.check() {
            break Err(stalled);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let cpu_s = cpu_seconds(emulator.0.id());
    drop(emulator);
    let _ = reader.join();
    let _ = fs::remove_file(&disk);
    // Bochs locks the image in a file beside it, and a killed Bochs leaves it.
    let _ = fs::remove_file(disk.with_extension("disk.lock"));
    result?;
    let seen = state.lock().expect("not poisoned");
    // How long each section took, for the log.
    let sections: Vec<String> = seen
        .marks
        .windows(2)
        .map(|w| {
            let cpu = match (w[0].2, w[1].2) {
                (Some(a), Some(b)) => format!(", {:.1} s CPU", b - a),
                _ => String::new(),
            };
            format!("{} {:.1} s{cpu}", w[0].0, w[1].1 - w[0].1)
        })
        .collect();
    if !sections.is_empty() {
        println!("[sandbox] {}: {}", scenario.name, sections.join("; "));
    }
    Ok(BootTimes {
        booted_s: seen.booted_s,
        cpu_s,
    })
}

/// The serial connection Bochs opens while it starts.
fn accept(
    listener: &TcpListener,
    emulator: &mut Emulator,
    bochs_log: &Path,
) -> anyhow::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("accepting Bochs's serial connection"),
        }
        if let Some(status) = emulator.0.try_wait()? {
            bail!(
                "Bochs stopped ({status}) before it opened its serial port; its log {}:\n{}",
                bochs_log.display(),
                tail(bochs_log)
            );
        }
        ensure!(
            Instant::now() < deadline,
            "Bochs did not connect its serial port within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
