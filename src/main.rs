//! The `kvs` binary: everything lives in `kvs::cli`.

fn main() {
    std::process::exit(kvs::cli::run());
}
