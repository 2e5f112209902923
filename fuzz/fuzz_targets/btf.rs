//! Kernel BTF as `/sys/kernel/btf` hands it over: vmlinux, then a module's
//! split BTF on top. Parsing and every query the attach plan makes must
//! not panic or loop, whatever the bytes.
#![no_main]

use exitprof::host::btf::Vmlinux;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into vmlinux and a module.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (usize::from(split) * rest.len()) / 255;
    let (base, module) = rest.split_at(at.min(rest.len()));
    let Ok(vmlinux) = Vmlinux::from_bytes(base.to_vec()) else {
        return;
    };
    let query = |btf: &exitprof::host::btf::Btf<'_>| {
        let _ = btf.offset("kvm_vcpu", &["vcpu_id"]);
        let _ = btf.offset("vmcb", &["control", "exit_code"]);
        let _ = btf.offset("vcpu_vmx", &["exit_reason"]);
        for event in ["kvm_exit", "kvm_entry", "kvm_cpuid"] {
            let _ = btf.tracepoint_args(event);
        }
    };
    if let Ok(btf) = vmlinux.with_module(std::path::Path::new("/nonexistent"), None) {
        query(&btf);
    }
    if let Ok(btf) = vmlinux.with_module_bytes(module.to_vec(), "kvm_amd") {
        query(&btf);
    }
});
