//! Progress of a mirror run. The engine reports to a [`Progress`]; the CLI shows bars on a
//! terminal and summary lines otherwise.

use crate::reference::Digest;

/// Receives progress events from the engine. Implementations must be cheap: `bytes` is called
/// for every chunk streamed.
pub trait Progress: Send + Sync {
    fn image_started(&self, _image: &str) {}
    fn image_finished(&self, _image: &str, _ok: bool) {}
    /// A blob upload begins; `size` from its descriptor.
    fn blob_started(&self, _digest: &Digest, _size: u64) {}
    fn bytes(&self, _count: u64) {}
    fn blob_finished(&self, _digest: &Digest) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}

/// Bars for images, blobs and bytes on a terminal (stderr); nothing when stderr is not a
/// terminal, where the caller prints summary lines instead.
pub struct TerminalProgress {
    _multi: indicatif::MultiProgress,
    images: indicatif::ProgressBar,
    blobs: indicatif::ProgressBar,
    bytes: indicatif::ProgressBar,
}

impl TerminalProgress {
    pub fn new(images: u64) -> Self {
        use std::io::IsTerminal as _;
        let target = if std::io::stderr().is_terminal() {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        };
        let multi = indicatif::MultiProgress::with_draw_target(target);
        let style = |template: &str| {
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        };
        let images_bar = multi.add(indicatif::ProgressBar::new(images));
        images_bar.set_style(style("images {bar:30} {pos}/{len}"));
        let blobs_bar = multi.add(indicatif::ProgressBar::new(0));
        blobs_bar.set_style(style("blobs  {bar:30} {pos}/{len}"));
        let bytes_bar = multi.add(indicatif::ProgressBar::new(0));
        bytes_bar.set_style(style(
            "bytes  {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec}",
        ));
        TerminalProgress {
            _multi: multi,
            images: images_bar,
            blobs: blobs_bar,
            bytes: bytes_bar,
        }
    }

    /// Clears the bars.
    pub fn finish(&self) {
        for bar in [&self.images, &self.blobs, &self.bytes] {
            bar.finish_and_clear();
        }
    }
}

impl Progress for TerminalProgress {
    fn image_finished(&self, _image: &str, _ok: bool) {
        self.images.inc(1);
    }

    fn blob_started(&self, _digest: &Digest, size: u64) {
        self.blobs.inc_length(1);
        self.bytes.inc_length(size);
    }

    fn bytes(&self, count: u64) {
        self.bytes.inc(count);
    }

    fn blob_finished(&self, _digest: &Digest) {
        self.blobs.inc(1);
    }
}
