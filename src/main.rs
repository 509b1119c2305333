//! The `fhir-fence` binary: a thin shell over [`fhir_fence::cli`].
#![forbid(unsafe_code)]

/// mimalloc: every request builds and drops many small JSON nodes, and glibc's allocator
/// made that the largest cost of a search Bundle (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fhir_fence::cli::main()
}
