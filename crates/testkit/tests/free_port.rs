//! `free_port` hands a port to one test process at a time, and never one the kernel may
//! give to somebody else's `bind(0)` or outgoing connection in the meantime.

use std::collections::HashSet;

/// The kernel's ephemeral range, from which `bind(0)` and outgoing connections take ports.
fn ephemeral_range() -> std::ops::RangeInclusive<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut it = text.split_whitespace().map(|s| s.parse::<u16>().unwrap());
    it.next().unwrap()..=it.next().unwrap()
}

#[test]
fn ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() {
    let ephemeral = ephemeral_range();
    let mut seen = HashSet::new();
    for _ in 0..300 {
        let port = testkit::free_port();
        assert!(!ephemeral.contains(&port), "{port} is in the ephemeral range {ephemeral:?}");
        assert!(seen.insert(port), "{port} was handed out twice");
        // Nobody listens on it.
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}

#[test]
fn another_process_cannot_claim_a_port_this_one_holds() {
    let port = testkit::free_port();
    // What another test process would do to claim it: lock the port's file. A lock is per
    // open file, so a second open here stands for another process.
    let claim = std::fs::File::options().write(true).open(testkit::port_lock_path(port)).unwrap();
    assert!(claim.try_lock().is_err(), "port {port} could be claimed twice");
}
