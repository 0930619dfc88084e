//! virtio-blk on a host file (or host block device), read-only or
//! read-write.
//!
//! One request queue. Offered: `VIRTIO_BLK_F_RO` for read-only disks,
//! `FLUSH`, `SEG_MAX` and `SIZE_MAX` (which together bound a request's
//! size), `BLK_SIZE` (512). Requests: IN, OUT, FLUSH, GET_ID; anything else
//! is answered `VIRTIO_BLK_S_UNSUPP`. See [`request`] for the checks.
//!
//! I/O is synchronous on the event loop thread, straight between the file
//! and the guest's pages.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::chain::ChainError;
use super::{read_config_bytes, DeviceContext, VirtioDevice};
use crate::devices::log_limit::{guest_warn, LogLimiter};
use crate::error::{Result, VmmError};

pub mod request;

use request::{Disk, ID_BYTES, SECTOR_SIZE};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data buffers per request (`seg_max`): the queue less header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data buffer (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most bytes one request's buffers may add up to: the advertised limits
/// plus room for the header, status and GET_ID.
pub const REQUEST_LIMIT: u64 = SEG_MAX as u64 * SIZE_MAX as u64 + 4096;

/// A block device for [`crate::VmConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Host file or block device.
    pub path: PathBuf,
    /// Refuse guest writes (and open the file read-only).
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes); by
    /// default derived from the file's device and inode numbers.
    pub id: Option<String>,
}

impl BlockConfig {
    /// A device on `path` with the default ID.
    pub fn new(path: impl Into<PathBuf>, read_only: bool) -> Self {
        BlockConfig {
            path: path.into(),
            read_only,
            id: None,
        }
    }
}

/// The virtio-blk device.
pub struct Block {
    disk: Disk,
    path: PathBuf,
    config: [u8; 24],
    log: LogLimiter,
}

impl Block {
    /// Opens the file and sizes the disk. A size that is not a whole number
    /// of sectors loses its tail (logged).
    pub fn open(config: &BlockConfig) -> Result<Self> {
        let path = &config.path;
        let file_err = |source| VmmError::File {
            what: "block device",
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(path)
            .map_err(file_err)?;
        // Seeking to the end sizes host block devices too (their metadata
        // length is 0).
        let bytes = file.seek(SeekFrom::End(0)).map_err(file_err)?;
        if bytes % SECTOR_SIZE != 0 {
            tracing::warn!(
                "block device {}: {bytes} bytes is not a whole number of sectors; \
                 the last {} bytes are not visible to the guest",
                path.display(),
                bytes % SECTOR_SIZE
            );
        }
        let id = match &config.id {
            Some(id) if id.len() > ID_BYTES => {
                return Err(VmmError::Config(format!(
                    "block device {}: ID {id:?} is longer than {ID_BYTES} bytes",
                    path.display()
                )))
            }
            Some(id) => id.clone(),
            None => {
                let meta = file.metadata().map_err(file_err)?;
                format!("amphi{:x}.{:x}", meta.dev(), meta.ino())
            }
        };
        Ok(Self::from_parts(
            file,
            path,
            bytes / SECTOR_SIZE,
            config.read_only,
            &id,
        ))
    }

    fn from_parts(file: File, path: &Path, capacity: u64, read_only: bool, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        // struct virtio_blk_config: capacity, size_max, seg_max,
        // geometry (unused), blk_size.
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Block {
            disk: Disk {
                file,
                capacity,
                read_only,
                id: id_bytes,
            },
            path: path.to_path_buf(),
            config,
            log: LogLimiter::new(),
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    /// Guest-caused problems seen so far.
    pub fn guest_errors(&self) -> u64 {
        self.log.total()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> String {
        format!("virtio-blk({})", self.path.display())
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if self.disk.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, ctx: &mut DeviceContext<'_>, index: usize) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(index) else {
            return;
        };
        let mut returned = false;
        'outer: loop {
            loop {
                let (head, used) = match queue.pop(mem, REQUEST_LIMIT) {
                    Ok(None) => break,
                    Ok(Some(Ok(chain))) => {
                        let (used, error) = request::handle(&self.disk, mem, &chain);
                        if let Some(e) = error {
                            guest_warn!(
                                self.log,
                                "virtio-blk({}): request {}: {e}",
                                self.path.display(),
                                chain.head
                            );
                        }
                        (chain.head, used)
                    }
                    Ok(Some(Err(bad))) => {
                        guest_warn!(
                            self.log,
                            "virtio-blk({}): bad descriptor chain: {}",
                            self.path.display(),
                            bad.error
                        );
                        if matches!(bad.error, ChainError::HeadOutOfRange { .. }) {
                            // Not a chain of this queue: nothing to return.
                            continue;
                        }
                        (bad.partial.head, request::fail(mem, &bad.partial))
                    }
                    Err(e) => {
                        guest_warn!(
                            self.log,
                            "virtio-blk({}): request queue unusable: {e}",
                            self.path.display()
                        );
                        break 'outer;
                    }
                };
                match queue.add_used(mem, head, used) {
                    Ok(()) => returned = true,
                    Err(e) => guest_warn!(
                        self.log,
                        "virtio-blk({}): chain {head} not returned: {e}",
                        self.path.display()
                    ),
                }
            }
            if !queue.enable_notification(mem) {
                break;
            }
        }
        if returned && queue.needs_notification(mem) {
            ctx.interrupt.signal_used();
        }
    }
}

#[cfg(test)]
mod tests;
