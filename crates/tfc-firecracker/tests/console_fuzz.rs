//! Fuzzing the console tailer (`console::tail_file`), which finds the
//! kernel's readiness and panic lines in a guest's serial output, against
//! a model of what it promises: for each watched text, the first line that
//! contains it (lines split at `\n`, a trailing `\r` dropped, bytes that
//! are not UTF-8 replaced, a line cut at 4096 bytes); the last 20 lines as
//! the tail; and a clean close, whatever the bytes (binary junk, no final
//! newline, lines far over the cut, output written in random pieces while
//! the tailer reads).
//!
//! Cases: 256 by default (each writes files and runs a tailer);
//! `TFC_FUZZ_CASES=100000` for a long run.

use std::io::Write;

use proptest::prelude::*;
use tfc_firecracker::console::{create_console_file, tail_file};

const MAX_LINE: usize = 4096;
const TAIL_LINES: usize = 20;

fn fuzz_config() -> ProptestConfig {
    let cases = std::env::var("TFC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

const NEEDLES: [&str; 4] = [
    "Run /init as init process",
    "Kernel panic",
    "reboot: Power down",
    "GUEST-READY",
];

/// Console output: kernel-like lines, the watched texts (whole, split
/// across writes, or inside longer lines), CRLFs, junk bytes, huge lines.
fn console() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => "\\[ *[0-9]{1,4}\\.[0-9]{6}\\] [ -~]{0,60}\n".prop_map(String::into_bytes),
        2 => proptest::sample::select(NEEDLES.to_vec())
            .prop_map(|n| format!("[    1.0] {n}\n").into_bytes()),
        1 => proptest::sample::select(NEEDLES.to_vec())
            .prop_map(|n| format!("{n} (partial line)").into_bytes()),
        1 => Just(b"\r\n".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..3 * MAX_LINE, any::<u8>())
            .prop_map(|(n, b)| vec![if b == b'\n' { b'x' } else { b }; n]),
        // A multi-byte character that the cut at MAX_LINE may split.
        1 => (4000usize..4100).prop_map(|n| {
            let mut line = vec![b'a'; n];
            line.extend_from_slice("é Kernel panic\n".as_bytes());
            line
        }),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// The lines the tailer promises to see, in order.
fn model_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // After the last newline: a line only when something is there.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|line| {
            let cut = &line[..line.len().min(MAX_LINE)];
            String::from_utf8_lossy(cut)
                .trim_end_matches('\r')
                .to_owned()
        })
        .collect()
}

fn run_case(bytes: Vec<u8>, cuts: Vec<usize>, limit: u64) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut writer = create_console_file(&log).unwrap();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let needles: Vec<String> = NEEDLES.iter().map(|n| n.to_string()).collect();
        // The first piece is written before the tailer starts, the rest
        // while it reads, each as one write (like a VMM's).
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        cuts.dedup();
        writer.write_all(&bytes[..cuts[0]]).unwrap();
        let watch = tail_file(&log, limit, needles, async {
            let _ = end_rx.await;
        })
        .await
        .unwrap();
        for pair in cuts.windows(2) {
            writer.write_all(&bytes[pair[0]..pair[1]]).unwrap();
            tokio::task::yield_now().await;
        }
        let _ = end_tx.send(());
        watch.closed().await;

        let lines = model_lines(&bytes);
        for needle in NEEDLES {
            let want = lines.iter().find(|l| l.contains(needle));
            let seen = watch.seen(needle);
            prop_assert_eq!(seen.as_ref(), want, "first line with {:?}", needle);
            match watch.wait_for(needle).await {
                Ok(line) => prop_assert_eq!(Some(&line), want),
                Err(e) => prop_assert!(want.is_none(), "{e}"),
            }
        }
        let tail_from = lines.len().saturating_sub(TAIL_LINES);
        prop_assert_eq!(watch.tail(), lines[tail_from..].to_vec());
        Ok(())
    })
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Output written in random pieces while the tailer reads; the limit
    /// is past the output, so nothing rotates under the writer.
    #[test]
    fn tailer_sees_what_the_model_sees(
        bytes in console(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let limit = bytes.len() as u64 + 1024 * 1024;
        run_case(bytes, cuts, limit)?;
    }

    /// All output written before the tailer starts, with a limit it
    /// passes: the file is rotated once read, and no line is lost or
    /// changed by it.
    #[test]
    fn rotation_after_reading_loses_no_line(bytes in console(), limit in 1u64..4096) {
        let cuts = vec![bytes.len()];
        run_case(bytes, cuts, limit)?;
    }
}
