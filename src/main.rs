//! The `fhir-fence` binary: a thin shell over [`fhir_fence::cli`].
#![forbid(unsafe_code)]

/// mimalloc instead of the system allocator: a request makes many small, short-lived
/// allocations (headers, URLs, JSON buffers) on one thread, which glibc's malloc serves slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fhir_fence::cli::main()
}
