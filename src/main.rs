//! The `fhir-fence` binary: a thin shell over [`fhir_fence::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    fhir_fence::cli::main()
}
