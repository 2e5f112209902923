//! Empty on purpose: the programs are the `exitprof` binary target, built
//! for the bpf target by `exitprof/build.rs`. This library target exists so
//! that `exitprof` can name this crate as a build dependency.
#![no_std]
