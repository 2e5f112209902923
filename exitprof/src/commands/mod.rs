//! One file per subcommand: its arguments (clap) and its `main`. Commands
//! compose the layers below (session, bpf, tui, present, model, host,
//! http, workload, guest); they hold no maps and no `unsafe`.
pub mod bench_readout;
pub mod guest;
pub mod record;
pub mod report;
pub mod serve;
pub mod stat;
pub mod top;
pub mod vm;
