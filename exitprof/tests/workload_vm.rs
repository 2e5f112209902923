//! `exitprof vm` on the real `/dev/kvm`: the exits that reach user space
//! are exactly the requested ones.
mod common;

use common::{can_profile, exitprof, json, one_line_error};

#[test]
fn vm_reports_exact_userspace_exits() {
    let Some(_serial) = can_profile("vm_reports_exact_userspace_exits") else {
        return;
    };
    let out = exitprof(&[
        "vm", "--json", "--cpuid", "100", "--pio", "7", "--mmio", "5", "--msr", "3", "--hlt", "2",
        "--rounds", "3",
    ]);
    let report = json(&out);
    assert_eq!(report["rounds"], 3);
    // Per round: 7 out + 7 in + the done port's out; 5 writes + 5 reads.
    assert_eq!(report["userspace_exits"]["IO"], 3 * 15);
    assert_eq!(report["userspace_exits"]["MMIO"], 3 * 10);
    assert_eq!(report["userspace_exits"]["HLT"], 3 * 2);
    assert_eq!(report["requested"]["pio_port"], 0xe9);
    assert_eq!(report["requested"]["mmio_gpa"], 0xd000_0000_u32);
    assert_eq!(report["mode"], "protected32");
}

/// Every vCPU runs the whole program: the counts multiply, and each
/// vCPU's are checked exactly by the workload itself.
#[test]
fn vm_with_several_vcpus_multiplies_the_exits() {
    let Some(_serial) = can_profile("vm_with_several_vcpus_multiplies_the_exits") else {
        return;
    };
    let out = exitprof(&[
        "vm", "--json", "--vcpus", "3", "--pio", "7", "--mmio", "5", "--hlt", "2", "--rounds", "2",
    ]);
    let report = json(&out);
    assert_eq!(
        (report["vcpus"].clone(), report["rounds"].clone()),
        (3.into(), 2.into())
    );
    assert_eq!(report["userspace_exits"]["IO"], 3 * 2 * 15);
    assert_eq!(report["userspace_exits"]["MMIO"], 3 * 2 * 10);
    assert_eq!(report["userspace_exits"]["HLT"], 3 * 2 * 2);
    let out = exitprof(&["vm", "--vcpus", "0"]);
    assert!(one_line_error(&out).contains("--vcpus"));
}

#[test]
fn vm_rejects_bad_values_in_one_line() {
    let out = exitprof(&["vm", "--pio-port", "70000"]);
    let err = one_line_error(&out);
    assert!(err.contains("70000 is no I/O port"), "{err}");
    let out = exitprof(&["vm", "--mmio-gpa", "0x1000"]);
    let err = one_line_error(&out);
    assert!(err.contains("is guest RAM"), "{err}");
}

#[test]
fn vm_without_dev_kvm_says_what_to_do() {
    let Some(_serial) = can_profile("vm_without_dev_kvm_says_what_to_do") else {
        return;
    };
    // A private /dev without kvm.
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev && exec {} vm --cpuid 1",
            common::EXITPROF
        ))
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(
        err.starts_with("exitprof: /dev/kvm does not exist: exitprof vm needs KVM"),
        "{err}"
    );
}
