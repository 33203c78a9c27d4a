// glibc's allocator showed up as a seventh of the server's CPU under load; mimalloc's
// thread-local free lists are cheaper for the many short-lived allocations of a request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    api::cli::main()
}
