//! The terminal of a live `ferry top`: the alternate screen, keys read one at a time without echo, the window size,
//! and drawing a frame in place with ANSI escapes. It knows nothing of Ferry; `frame.rs` decides what is drawn.
//!
//! Ctrl-C stays a signal (the terminal's ISIG is left on), so that a stuck redraw can always be interrupted; the
//! caller catches it and drops the `Screen`, which puts the terminal back as it was, as it does on every other way
//! out, a panic included.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;

use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

use super::frame::{Line, Size, Tone};

/// The size assumed when the terminal will not say, as a VT100's.
const FALLBACK_SIZE: Size = Size { cols: 80, rows: 24 };

// TIOCGWINSZ: the kernel's answer to "how large is this terminal window".
nix::ioctl_read_bad!(window_size, nix::libc::TIOCGWINSZ, nix::libc::winsize);

/// The terminal's size in characters.
pub fn size() -> Size {
    let mut ws = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given, which lives for the whole call.
    let read = unsafe { window_size(nix::libc::STDOUT_FILENO, &mut ws) };
    match read {
        Ok(_) if ws.ws_col > 0 && ws.ws_row > 0 => Size { cols: usize::from(ws.ws_col), rows: usize::from(ws.ws_row) },
        _ => FALLBACK_SIZE,
    }
}

/// The live screen: while it exists the terminal shows the alternate screen with the cursor hidden, and stdin, when
/// it is a terminal, hands over keys as they are typed. Dropping it restores everything.
pub struct Screen {
    /// The terminal settings of stdin before, when it is a terminal.
    saved: Option<Termios>,
}

impl Screen {
    pub fn enter() -> std::io::Result<Screen> {
        let stdin = std::io::stdin();
        let saved = if stdin.is_terminal() {
            let saved = termios::tcgetattr(stdin.as_fd())?;
            let mut keys = saved.clone();
            // Keys one at a time and not echoed; signals (Ctrl-C, Ctrl-Z) keep working.
            keys.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
            keys.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
            keys.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
            termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &keys)?;
            Some(saved)
        } else {
            None
        };
        let screen = Screen { saved };
        // Alternate screen, cursor hidden, no automatic wrap at the right margin.
        let mut out = std::io::stdout().lock();
        out.write_all(b"\x1b[?1049h\x1b[?25l\x1b[?7l")?;
        out.flush()?;
        Ok(screen)
    }

    /// Draws a frame over the previous one, line by line from the top, each line cleared first so that nothing of
    /// the last frame shows through and no line is ever written past the margin.
    pub fn draw(&mut self, lines: &[Line]) -> std::io::Result<()> {
        let mut buf = String::from("\x1b[H");
        for (row, line) in lines.iter().enumerate() {
            buf.push_str(&format!("\x1b[{};1H\x1b[2K", row + 1));
            for span in &line.0 {
                match sgr(span.tone) {
                    Some(code) => buf.push_str(&format!("\x1b[{code}m{}\x1b[0m", span.text)),
                    None => buf.push_str(&span.text),
                }
            }
        }
        // Clear what is left below.
        buf.push_str(&format!("\x1b[{};1H\x1b[J", lines.len() + 1));
        let mut out = std::io::stdout().lock();
        out.write_all(buf.as_bytes())?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b"\x1b[0m\x1b[?7h\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// The SGR parameters for a tone: bold headings, dim missing data, green work, yellow waste, red faults.
fn sgr(tone: Tone) -> Option<&'static str> {
    match tone {
        Tone::Plain => None,
        Tone::Heading => Some("1"),
        Tone::Dim => Some("2"),
        Tone::Busy => Some("32"),
        Tone::Warn => Some("1;33"),
        Tone::Bad => Some("1;31"),
    }
}
