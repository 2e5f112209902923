//! `exitprof guest` on a machine whose hypervisor has no exitprof patch
//! (every machine this runs on: the patched KVM only runs in the sandbox,
//! where `cargo xtask e2e` checks the leaves from a real guest).
mod common;

use common::{exitprof, one_line_error};

#[test]
fn guest_without_the_patch_explains_in_one_line_and_fails() {
    let out = exitprof(&["guest"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no table of zeros: {out:?}");
    let line = one_line_error(&out);
    assert!(
        line.starts_with("exitprof: the hypervisor (")
            && line.contains(") has no exitprof patch: CPUID 0x4FFFFFFB returned eax=")
            || line.starts_with("exitprof: not running in a virtual machine"),
        "{line}"
    );
    let json = exitprof(&["guest", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    assert!(json.stdout.is_empty(), "{json:?}");
}
