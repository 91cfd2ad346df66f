//! Ctrl-C: the progress line is cleared and one line says what was interrupted, then needle
//! exits with 130 (128 + SIGINT), as a shell expects. During a scan the line names the running
//! stage and says how to go on: a resumed scan reuses every stage that finished.

use std::sync::Mutex;

/// The phase of the scan running; `None` outside a scan.
static PHASE: Mutex<Option<&'static str>> = Mutex::new(None);

/// Notes the phase of a scan now running (a stage name, or `loading`), for the message.
pub fn scan_phase(phase: &'static str) {
    if let Ok(mut p) = PHASE.lock() {
        *p = Some(phase);
    }
}

/// Notes the stage now running, if a scan (rather than a single `needle stage`) is running.
pub fn stage(name: &'static str) {
    if let Ok(mut p) = PHASE.lock() {
        if p.is_some() {
            *p = Some(name);
        }
    }
}

/// Installs the handler; a failure to install it only loses the message.
pub fn install() {
    let result = ctrlc::set_handler(|| {
        crate::progress::clear();
        let phase = PHASE.lock().ok().and_then(|p| *p);
        let line = match phase {
            Some(phase) => format!("interrupted during {phase}; rerun with --resume"),
            None => "interrupted".to_string(),
        };
        eprintln!("{line}");
        std::process::exit(130);
    });
    if let Err(e) = result {
        tracing::debug!("cannot install the Ctrl-C handler: {e}");
    }
}
