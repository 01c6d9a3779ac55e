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

/// Bars for images, blobs and bytes on a terminal (stderr); nothing at all when stderr is not
/// a terminal, where the caller prints summary lines instead.
pub struct TerminalProgress {
    bars: Option<Bars>,
}

struct Bars {
    _multi: indicatif::MultiProgress,
    images: indicatif::ProgressBar,
    blobs: indicatif::ProgressBar,
    bytes: indicatif::ProgressBar,
}

impl TerminalProgress {
    pub fn new(images: u64) -> Self {
        use std::io::IsTerminal as _;
        TerminalProgress {
            bars: std::io::stderr()
                .is_terminal()
                .then(|| Bars::new(images, indicatif::ProgressDrawTarget::stderr())),
        }
    }

    /// Clears the bars.
    pub fn finish(&self) {
        if let Some(bars) = &self.bars {
            for bar in [&bars.images, &bars.blobs, &bars.bytes] {
                bar.finish_and_clear();
            }
        }
    }
}

impl Bars {
    fn new(images: u64, target: indicatif::ProgressDrawTarget) -> Self {
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
        Bars {
            _multi: multi,
            images: images_bar,
            blobs: blobs_bar,
            bytes: bytes_bar,
        }
    }
}

impl Progress for TerminalProgress {
    fn image_finished(&self, _image: &str, _ok: bool) {
        if let Some(bars) = &self.bars {
            bars.images.inc(1);
        }
    }

    fn blob_started(&self, _digest: &Digest, size: u64) {
        if let Some(bars) = &self.bars {
            bars.blobs.inc_length(1);
            bars.bytes.inc_length(size);
        }
    }

    fn bytes(&self, count: u64) {
        if let Some(bars) = &self.bars {
            bars.bytes.inc(count);
        }
    }

    fn blob_finished(&self, _digest: &Digest) {
        if let Some(bars) = &self.bars {
            bars.blobs.inc(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_count_images_blobs_and_bytes() {
        let progress = TerminalProgress {
            bars: Some(Bars::new(2, indicatif::ProgressDrawTarget::hidden())),
        };
        let digest = Digest::sha256_of(b"layer");
        progress.blob_started(&digest, 10);
        progress.bytes(4);
        progress.bytes(6);
        progress.blob_finished(&digest);
        progress.image_finished("web", true);
        let bars = progress.bars.as_ref().map(|b| {
            (
                (b.images.position(), b.images.length()),
                (b.blobs.position(), b.blobs.length()),
                (b.bytes.position(), b.bytes.length()),
            )
        });
        assert_eq!(bars, Some(((1, Some(2)), (1, Some(1)), (10, Some(10)))));
    }
}
