//! Keys typed while watching, read without Enter or echo.

use std::io::Write;

use tokio::sync::mpsc;

use super::Event;

/// Single keys from the terminal (no Enter, no echo) while it lives; the
/// terminal's settings are put back when it is dropped. Ctrl-C still
/// interrupts (signals stay on).
pub(super) struct Keys {
    saved: libc::termios,
}

impl Keys {
    pub(super) fn listen(tx: mpsc::Sender<Event>) -> Option<Keys> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
        let saved = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return None;
            }
            saved
        };
        std::thread::spawn(move || {
            use std::io::Read;
            let mut byte = [0u8; 1];
            let mut stdin = std::io::stdin();
            while stdin.read(&mut byte).is_ok_and(|n| n == 1) {
                if matches!(byte[0], b'q' | b'Q') {
                    let _ = tx.blocking_send(Event::Quit);
                    return;
                }
            }
        });
        // Hide the cursor and start from a clear screen.
        print!("\x1b[?25l\x1b[2J");
        Some(Keys { saved })
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `listen`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
        print!("\x1b[?25h");
        let _ = std::io::stdout().flush();
    }
}
