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

use common::{EXITPROF, can_profile, exitprof_bpf_ids, loaded_since, still_loaded};

fn killed_hard_leaves_nothing(args: &[&str]) {
    let before = exitprof_bpf_ids();
    let mut child = Command::new(EXITPROF)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let ours = loaded_since(&before);
    let programs = ours.iter().filter(|(kind, _)| *kind == 'p').count();
    let maps = ours.len() - programs;
    assert!(
        programs >= 2 && maps >= 2,
        "{args:?}: {programs} programs and {maps} maps while running"
    );
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert_eq!(
        still_loaded(&ours),
        std::collections::BTreeSet::new(),
        "{args:?}: programs or maps (p/m, id) left after SIGKILL"
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
