//! What the host and the guest init share: the guest channel's frames and
//! codec ([`channel`]) and the guest's fixed paths. Both sides import this
//! module; neither imports the other (ARCHITECTURE.md, "Layers"). The
//! host's state machine over these frames is `vm::protocol`.

pub mod channel;

/// Where the guest init lives in the initramfs (`argv[0]` of PID 1, and the
/// kernel's `rdinit=`).
pub const GUEST_INIT: &str = "/.amphi/init";
/// The virtio-fs tag of the image's rootfs share (`amphi.root=virtiofs`).
pub const VIRTIOFS_ROOT_TAG: &str = "amphi-root";
/// The virtio-fs tag of a run's volumes share.
pub const VIRTIOFS_VOLUME_TAG: &str = "amphi-vol";
