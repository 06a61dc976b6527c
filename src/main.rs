//! The `mkt` binary: parses arguments and hands over to `cli`.

mod cli;

fn main() {
    // like every Unix tool: `mkt runs | head` ends quietly when `head` has
    // read enough, instead of panicking on the closed pipe
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(cli::run());
}
