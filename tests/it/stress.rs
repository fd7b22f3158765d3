//! Stress (not in the default run: `#[ignore]`): one 10,000-resource store, 50 SIGKILLs of `apply`
//! and 20 of `rollback` at random instants, each resumed and the tree compared byte for byte
//! (content, owner, mode, attributes) with an uninterrupted run's. Run it with
//! `cargo test --release --test it -- --ignored stress`; PR_STRESS_N, PR_STRESS_APPLY_KILLS and
//! PR_STRESS_ROLLBACK_KILLS change the size and the counts.

use crate::support::child::{kill_after, xorshift};
use crate::support::world::{assert_same_tree, tree, World};
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn timed(w: &World, command: &str) -> u64 {
    let t = Instant::now();
    w.cmd().arg(command).assert().code(0);
    t.elapsed().as_micros().max(1000) as u64
}

#[test]
#[ignore = "stress: minutes; run with --ignored (see README)"]
fn stress_killed_apply_and_rollback_on_a_large_store_end_byte_for_byte() {
    let n = env("PR_STRESS_N", 10_000);
    let apply_kills = env("PR_STRESS_APPLY_KILLS", 50);
    let rollback_kills = env("PR_STRESS_ROLLBACK_KILLS", 20);
    let homes = (n / 100).clamp(8, 200);
    let w = World::new(homes, n, 91);
    let original = tree(&w.store.root);
    w.cmd().arg("plan").assert().code(0);
    let apply_us = timed(&w, "apply");
    let applied = tree(&w.store.root);
    let rollback_us = timed(&w, "rollback");
    assert_same_tree(&tree(&w.store.root), &original, "uninterrupted rollback");

    let mut seed = 0x5747_e55e_u64;
    let (mut hits, mut attempts) = (0, 0);
    while hits < apply_kills {
        attempts += 1;
        assert!(
            attempts <= 4 * apply_kills,
            "only {hits} of {attempts} kills hit a running apply"
        );
        let delay = Duration::from_micros(xorshift(&mut seed) % apply_us);
        let hit = kill_after(&w.config, "apply", delay);
        // Killed or not, `apply` ends the run (resuming it, or checking the store holds it).
        w.cmd().arg("apply").assert().code(0);
        assert_same_tree(
            &tree(&w.store.root),
            &applied,
            &format!("apply kill {attempts}"),
        );
        if hit {
            hits += 1;
        }
        w.cmd().arg("rollback").assert().code(0);
        assert_same_tree(
            &tree(&w.store.root),
            &original,
            &format!("rollback after apply kill {attempts}"),
        );
    }

    let (mut hits, mut attempts) = (0, 0);
    while hits < rollback_kills {
        attempts += 1;
        assert!(
            attempts <= 4 * rollback_kills,
            "only {hits} of {attempts} kills hit a running rollback"
        );
        w.cmd().arg("apply").assert().code(0);
        assert_same_tree(&tree(&w.store.root), &applied, "applied again");
        let delay = Duration::from_micros(xorshift(&mut seed) % rollback_us);
        if kill_after(&w.config, "rollback", delay) {
            hits += 1;
        }
        w.cmd().arg("rollback").assert().code(0);
        assert_same_tree(
            &tree(&w.store.root),
            &original,
            &format!("rollback kill {attempts}"),
        );
    }
}
