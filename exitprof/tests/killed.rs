//! Killed the hard way: after `kill -9` of `stat` and `top`, no exitprof
//! program or link stays attached and no map stays behind (nothing is
//! pinned, so closing the process's descriptors frees everything). The
//! same for `record` during its shadow-paging run is a sandbox scenario
//! (`module-reload`), where the paging mode can be switched.
mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{EXITPROF, attached_exitprof_programs_settled, can_profile, exitprof_maps};

fn killed_hard_leaves_nothing(args: &[&str]) {
    assert_eq!(
        attached_exitprof_programs_settled(0),
        0,
        "another exitprof is running"
    );
    let mut child = Command::new(EXITPROF)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(
        attached_exitprof_programs_settled(2),
        2,
        "{args:?}: kvm_cpuid and kvm_exit attached while running"
    );
    assert!(
        !exitprof_maps().is_empty(),
        "{args:?}: its maps exist while running"
    );
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert_eq!(
        attached_exitprof_programs_settled(0),
        0,
        "{args:?}: programs left attached after SIGKILL"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !exitprof_maps().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        exitprof_maps(),
        Vec::<String>::new(),
        "{args:?}: maps left after SIGKILL"
    );
}

#[test]
fn stat_killed_with_sigkill_leaves_nothing_attached() {
    let Some(_serial) = can_profile("stat_killed_with_sigkill_leaves_nothing_attached") else {
        return;
    };
    killed_hard_leaves_nothing(&["stat", "--by-vcpu"]);
}

#[test]
fn top_killed_with_sigkill_leaves_nothing_attached() {
    let Some(_serial) = can_profile("top_killed_with_sigkill_leaves_nothing_attached") else {
        return;
    };
    killed_hard_leaves_nothing(&["top", "--json", "-d", "5s"]);
}
