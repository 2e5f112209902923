//! A command forked by a profiling run, held before `exec` until its pid is
//! tracked, so that none of its exits are missed.
use std::{ffi::CString, io::Write as _, os::fd::AsRawFd as _};

use anyhow::{Context as _, bail};

/// Whether `program` names something `execvp` can run: a path to an
/// executable file, or a name found on `PATH`.
///
/// # Errors
/// A one-line reason.
pub fn runnable(program: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        executable(std::path::Path::new(program))
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
        })
    };
    if found {
        Ok(())
    } else {
        bail!("cannot run `{program}`: no such executable (a path, or a program on PATH)")
    }
}

/// A command forked by a profiling run, held before `exec` until released.
pub struct GatedChild {
    pid: libc::pid_t,
    /// Write end of the gate; closing it without writing makes the child
    /// exit instead of running the command.
    gate: Option<std::io::PipeWriter>,
    status: Option<i32>,
}

impl GatedChild {
    /// Forks; the child waits on a pipe before it `exec`s `command`.
    /// (`std::process::Command` cannot do this: `spawn` waits for `exec`.)
    pub fn fork(command: &[String]) -> anyhow::Result<Self> {
        let argv: Vec<CString> = command
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .context("COMMAND contains a NUL byte")?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let (gate_read, gate_write) = std::io::pipe().context("creating a pipe")?;
        let read_fd = gate_read.as_raw_fd();
        // SAFETY: after fork the child only calls async-signal-safe
        // functions (read, close, execvp, write, _exit) on memory prepared
        // before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork failed: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            unsafe {
                let mut byte = 0u8;
                let n = libc::read(read_fd, (&raw mut byte).cast(), 1);
                libc::close(read_fd);
                if n != 1 {
                    libc::_exit(127);
                }
                libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
                let msg = b"exitprof: cannot run COMMAND (execvp failed)\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(127);
            }
        }
        drop(gate_read);
        Ok(Self {
            pid,
            gate: Some(gate_write),
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.pid.cast_unsigned()
    }

    /// Lets the command run.
    pub fn release(&mut self) -> anyhow::Result<()> {
        if let Some(mut gate) = self.gate.take() {
            gate.write_all(&[1]).context("starting the command")?;
        }
        Ok(())
    }

    /// The exit code (128 + signal when killed), once it exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<i32>> {
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let rc = unsafe { libc::waitpid(self.pid, &raw mut status, libc::WNOHANG) };
            if rc < 0 {
                bail!(
                    "waiting for the command: {}",
                    std::io::Error::last_os_error()
                );
            }
            if rc == self.pid {
                self.status = Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
        }
        Ok(self.status)
    }

    /// Ends the command (SIGTERM) and reaps it.
    pub fn terminate(&mut self) {
        self.gate = None;
        if self.status.is_none() {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGTERM);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}
