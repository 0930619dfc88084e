//! The transport driven register by register, as a guest driver would (and
//! as a broken one might), with a stand-in device.

use std::sync::{Arc, Mutex};

use super::*;
use crate::devices::virtio::testing::test_memory;

#[derive(Default)]
struct Seen {
    processed: Vec<usize>,
    activated: Option<u64>,
    resets: u32,
}

struct Dummy {
    seen: Arc<Mutex<Seen>>,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn name(&self) -> String {
        "dummy".into()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 16]
    }
    fn features(&self) -> u64 {
        1 << 5
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(b"ABCDEFGH", offset, data);
    }
    fn activate(&mut self, activation: &Activation<'_>) {
        self.seen.lock().unwrap().activated = Some(activation.features);
    }
    fn process_queue(&mut self, _ctx: &mut DeviceContext<'_>, index: usize) {
        self.seen.lock().unwrap().processed.push(index);
    }
    fn reset(&mut self) {
        self.seen.lock().unwrap().resets += 1;
    }
}

fn transport() -> (MmioTransport, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let dev = Dummy { seen: seen.clone() };
    (
        MmioTransport::new(Box::new(dev), test_memory()).unwrap(),
        seen,
    )
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    wr(t, reg::STATUS, S_ACKNOWLEDGE);
    wr(t, reg::STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(t, reg::DRIVER_FEATURES_SEL, 0);
    wr(t, reg::DRIVER_FEATURES, features as u32);
    wr(t, reg::DRIVER_FEATURES_SEL, 1);
    wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, reg::STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    rd(t, reg::STATUS)
}

fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u64) {
    wr(t, reg::QUEUE_SEL, sel);
    wr(t, reg::QUEUE_NUM, size);
    wr(t, reg::QUEUE_DESC_LOW, base as u32);
    wr(t, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
    wr(t, reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    wr(t, reg::QUEUE_DRIVER_HIGH, 0);
    wr(t, reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    wr(t, reg::QUEUE_DEVICE_HIGH, 0);
    wr(t, reg::QUEUE_READY, 1);
}

const ALL: u32 = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;

#[test]
fn identifies_itself() {
    let (mut t, _) = transport();
    assert_eq!(rd(&mut t, reg::MAGIC), 0x7472_6976);
    assert_eq!(rd(&mut t, reg::VERSION), 2);
    assert_eq!(rd(&mut t, reg::DEVICE_ID), 42);
    assert_eq!(rd(&mut t, reg::VENDOR_ID), MMIO_VENDOR_ID);
    wr(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 16);
    wr(&mut t, reg::QUEUE_SEL, 9);
    assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0, "no such queue");
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), (1 << 5) | (1 << 29));
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1");
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 7);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0);
    assert_eq!(rd(&mut t, reg::SHM_LEN_LOW), u32::MAX, "no shared memory");
    let mut cfg = [0u8; 2];
    t.read(reg::CONFIG + 2, &mut cfg);
    assert_eq!(&cfg, b"CD");
}

#[test]
fn full_handshake_activates_and_looks_at_the_queues() {
    let (mut t, seen) = transport();
    let features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | (1 << 5);
    assert_eq!(
        negotiate(&mut t, features),
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK
    );
    setup_queue(&mut t, 0, 128, 0x10000);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
    assert!(!t.is_active());
    wr(&mut t, reg::STATUS, ALL);
    assert_eq!(rd(&mut t, reg::STATUS), ALL);
    assert!(t.is_active());
    assert_eq!(seen.lock().unwrap().activated, Some(features));
    // Activation signals the ready queue so early buffers are seen.
    assert_eq!(t.queue_events()[0].read().unwrap(), 1);
    assert!(t.queue_events()[1].read().is_err(), "queue 1 not ready");
    t.notify_queue(0);
    assert_eq!(seen.lock().unwrap().processed, vec![0]);
    // Queue configuration is frozen after DRIVER_OK.
    wr(&mut t, reg::QUEUE_SEL, 1);
    wr(&mut t, reg::QUEUE_NUM, 8);
    assert_eq!(t.queues()[1].size(), 16);
    assert_eq!(t.guest_errors(), 1);
}

#[test]
fn features_not_offered_or_without_version_1_are_refused() {
    let (mut t, _) = transport();
    let status = negotiate(&mut t, 1 << 5);
    assert_eq!(status & S_FEATURES_OK, 0, "VERSION_1 missing");
    wr(&mut t, reg::STATUS, 0);
    let status = negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 7));
    assert_eq!(status & S_FEATURES_OK, 0, "bit 7 not offered");
    // DRIVER_OK without FEATURES_OK does not stick either.
    wr(&mut t, reg::STATUS, S_ACKNOWLEDGE | S_DRIVER | S_DRIVER_OK);
    assert_eq!(rd(&mut t, reg::STATUS) & S_DRIVER_OK, 0);
    assert!(!t.is_active());
}

#[test]
fn status_bits_only_in_order_and_never_cleared() {
    let (mut t, _) = transport();
    wr(&mut t, reg::STATUS, S_DRIVER);
    assert_eq!(rd(&mut t, reg::STATUS), 0, "DRIVER before ACKNOWLEDGE");
    wr(&mut t, reg::STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(&mut t, reg::STATUS, S_ACKNOWLEDGE);
    assert_eq!(
        rd(&mut t, reg::STATUS),
        S_ACKNOWLEDGE | S_DRIVER,
        "not cleared"
    );
    wr(&mut t, reg::STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FAILED);
    assert_ne!(rd(&mut t, reg::STATUS) & S_FAILED, 0);
    // Features written outside negotiation are ignored.
    wr(&mut t, reg::DRIVER_FEATURES, 0xffff_ffff);
    assert!(t.guest_errors() >= 3);
}

#[test]
fn bad_queue_configurations_stay_not_ready() {
    let (mut t, _) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    // Larger than the maximum of 256.
    setup_queue(&mut t, 0, 512, 0x10000);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    // Not a power of two.
    setup_queue(&mut t, 0, 100, 0x10000);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    // Too large for the register.
    setup_queue(&mut t, 0, 0x1_0000, 0x10000);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    // Rings outside guest memory.
    setup_queue(&mut t, 0, 256, 0x7_0000_0000);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    // A queue that does not exist.
    setup_queue(&mut t, 5, 16, 0x10000);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    // And then a good one.
    setup_queue(&mut t, 0, 256, 0x10000);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
}

#[test]
fn notifications_for_missing_or_idle_queues_are_harmless() {
    let (mut t, seen) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 16, 0x10000);
    wr(&mut t, reg::STATUS, ALL);
    let _ = t.queue_events()[0].read();
    // Through the register (no ioeventfd): signals the queue's eventfd.
    wr(&mut t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(t.queue_events()[0].read().unwrap(), 1);
    wr(&mut t, reg::QUEUE_NOTIFY, 77);
    t.notify_queue(1); // exists, not ready
    t.notify_queue(99); // does not exist
    assert!(seen.lock().unwrap().processed.is_empty());
    assert_eq!(t.guest_errors(), 3);
}

#[test]
fn reset_returns_to_the_initial_state() {
    let (mut t, seen) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 16, 0x10000);
    wr(&mut t, reg::STATUS, ALL);
    t.interrupt().signal_used();
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 1);
    wr(&mut t, reg::INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
    t.interrupt().signal_used();
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
    wr(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(t.queues()[0].size(), 256);
    assert_eq!(seen.lock().unwrap().resets, 1);
    t.notify_queue(0);
    assert!(seen.lock().unwrap().processed.is_empty(), "inactive");
    // And the device can be brought up again.
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 16, 0x10000);
    wr(&mut t, reg::STATUS, ALL);
    assert!(t.is_active());
}

#[test]
fn odd_accesses_read_zero_and_write_nothing() {
    let (mut t, _) = transport();
    let mut two = [0xffu8; 2];
    t.read(reg::MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    let mut four = [0xffu8; 4];
    t.read(reg::MAGIC + 1, &mut four);
    assert_eq!(four, [0; 4]);
    t.read(reg::QUEUE_NOTIFY, &mut four);
    assert_eq!(four, [0; 4], "write-only register");
    t.write(reg::STATUS, &[1]);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    t.write(reg::STATUS + 2, &[1, 0, 0, 0]);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    wr(&mut t, reg::MAGIC, 5);
    t.write(reg::CONFIG, &[1, 2]);
    let mut big = [0xffu8; 16];
    t.read(reg::CONFIG, &mut big);
    assert_eq!(big, [0; 16]);
    assert_eq!(rd(&mut t, reg::MAGIC), MMIO_MAGIC);
    assert_eq!(t.guest_errors(), 7);
}
