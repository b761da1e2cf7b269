//! Goal: gossip membership and phi-accrual detection spread news in O(log N) rounds: a join
//! reaches every node, and a death is seen by every live node, in a number of rounds that grows
//! like log N (1,000 nodes vs 100), and detection at the default threshold 8 takes about what
//! the phi formula predicts, with no live node wrongly declared down.
//!
//! Method: N [`Membership`] state machines in one process, a seeded RNG, synchronous rounds:
//! round r is `now = r * 1000` ms; every live node ticks (Syns to `fanout` = 3 random live
//! peers), then all Syns are delivered, then all Acks, then all Ack2s, so a piece of news moves
//! at most about one exchange per round. A dead node neither ticks nor answers. The cluster
//! starts fully known and warms up for a few rounds so every detector has real samples.
//! `KVS_SIM_SEEDS=n` runs n seeds instead of 1; a failure names its seed.

use std::net::SocketAddr;

use kvs::cluster::gossip::{GossipMsg, GossipOptions, Liveness, Membership, NodeMeta, Status};
use kvs::cluster::phi::silence_for_phi_ms;
use kvs_wire::placement::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const ROUND_MS: u64 = 1000;
const WARMUP_ROUNDS: u64 = 6;
const ROUNDS_MAX: u64 = 200;

/// NodeId(i + 1) lives at index i.
struct Sim {
    nodes: Vec<Membership>,
    alive: Vec<bool>,
    rng: StdRng,
    round: u64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, (i >> 8) as u8, i as u8], 7000))
}

fn index(id: NodeId) -> usize {
    (id.0 - 1) as usize
}

impl Sim {
    /// `n` nodes, all Up and known to each other at time 0.
    fn new(n: usize, seed: u64) -> Sim {
        let options = GossipOptions::default();
        let mut nodes: Vec<Membership> = (0..n)
            .map(|i| {
                let mut m = Membership::new(
                    NodeId(i as u64 + 1),
                    addr(i),
                    1,
                    NodeMeta::default(),
                    options.clone(),
                );
                m.set_status(Status::Up);
                m
            })
            .collect();
        let states: Vec<_> = nodes.iter().map(|m| m.view(0)[0].state.clone()).collect();
        for m in &mut nodes {
            assert!(m.receive(0, NodeId(1), GossipMsg::Ack2 { states: states.clone() }).is_none());
            assert_eq!(m.len(), n);
        }
        Sim { nodes, alive: vec![true; n], rng: StdRng::seed_from_u64(seed), round: 0 }
    }

    fn now_ms(&self) -> u64 {
        self.round * ROUND_MS
    }

    /// One synchronous round: ticks, then Syns, Acks and Ack2s, each phase delivered in full.
    fn step(&mut self) {
        self.round += 1;
        let now = self.now_ms();
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.alive[i]).collect();
        order.shuffle(&mut self.rng);
        let mut in_flight: Vec<(usize, usize, GossipMsg)> = Vec::new();
        for &i in &order {
            for (to, msg) in self.nodes[i].tick(now, &mut self.rng) {
                in_flight.push((i, index(to), msg));
            }
        }
        // Syns, then Acks, then Ack2s: each delivery's reply goes out in the next phase.
        for _phase in 0..3 {
            let mut replies = Vec::new();
            for (from, to, msg) in in_flight.drain(..) {
                if !self.alive[to] {
                    continue;
                }
                if let Some(reply) = self.nodes[to].receive(now, NodeId(from as u64 + 1), msg) {
                    replies.push((to, from, reply));
                }
            }
            in_flight = replies;
        }
        assert!(in_flight.is_empty(), "an Ack2 has no reply");
    }

    /// Adds a Joining node that knows three random seeds; returns its index.
    fn join(&mut self) -> usize {
        let i = self.nodes.len();
        let mut m = Membership::new(
            NodeId(i as u64 + 1),
            addr(i),
            1,
            NodeMeta::default(),
            GossipOptions::default(),
        );
        for _ in 0..3 {
            let s = self.rng.gen_range(0..i);
            m.add_seed(NodeId(s as u64 + 1), addr(s));
        }
        self.nodes.push(m);
        self.alive.push(true);
        i
    }

    fn live(&self) -> impl Iterator<Item = &Membership> {
        self.nodes.iter().zip(&self.alive).filter(|(_, &a)| a).map(|(m, _)| m)
    }

    /// Rounds until `done` holds after a round, at most ROUNDS_MAX.
    fn rounds_until(&mut self, done: impl Fn(&Sim) -> bool) -> u64 {
        let start = self.round;
        while !done(self) {
            assert!(self.round - start < ROUNDS_MAX, "no convergence in {ROUNDS_MAX} rounds");
            self.step();
        }
        self.round - start
    }
}

struct Measured {
    join_rounds: u64,
    detect_rounds: u64,
}

fn run(n: usize, seed: u64) -> Measured {
    let mut sim = Sim::new(n, seed);
    for _ in 0..WARMUP_ROUNDS {
        sim.step();
    }
    let log2_n = (n as f64).log2();
    // Push-pull gossip with fanout f informs everyone in about log_(f+1) N + O(log log N)
    // rounds (Karp et al. 2000): about 3.3 rounds for N = 100 at f = 3. 3 * log2 N (20 and 30
    // rounds) is generous, yet an O(N) spread would exceed it.
    let spread_bound = (3.0 * log2_n).ceil() as u64;

    // (a) A join reaches every node.
    let new = NodeId(sim.join() as u64 + 1);
    let join_rounds = sim.rounds_until(|s| s.live().all(|m| m.knows(new)));
    assert!(join_rounds <= spread_bound, "seed {seed}: join took {join_rounds} rounds at N={n}");
    let joined = index(new);
    sim.nodes[joined].set_status(Status::Up);

    // (b) A death is detected by every live node at threshold 8.
    let dead = NodeId(sim.rng.gen_range(0..n) as u64 + 1);
    sim.alive[index(dead)] = false;
    let detect_rounds = sim
        .rounds_until(|s| s.live().all(|m| m.liveness(dead, s.now_ms()) == Some(Liveness::Down)));
    // Each node declares the death a phi-8 silence after the last heartbeat it saw, and saw
    // that heartbeat at most one spread after the node died. The silence follows from each
    // observer's own window (mean plus acceptable pause, sd floored), by the phi formula.
    let options = GossipOptions::default().phi;
    let silences: Vec<f64> = sim
        .live()
        .map(|m| {
            let w = m.arrivals(dead).expect("every node heard the dead one");
            let mean = w.mean_ms() + f64::from(options.acceptable_pause_ms);
            let sd = w.std_dev_ms().max(f64::from(options.min_std_dev_ms));
            silence_for_phi_ms(options.threshold, mean, sd)
        })
        .collect();
    let silence_max = silences.iter().copied().fold(0.0, f64::max);
    let silence_min = silences.iter().copied().fold(f64::INFINITY, f64::min);
    let detect_bound = (silence_max / ROUND_MS as f64).ceil() as u64 + spread_bound;
    assert!(
        detect_rounds <= detect_bound,
        "seed {seed}: detection took {detect_rounds} rounds at N={n}"
    );
    assert!(
        detect_rounds as f64 >= (silence_min / ROUND_MS as f64).floor(),
        "seed {seed}: detected after {detect_rounds} rounds, before any phi-8 silence ({silence_min} ms)"
    );
    // No live node is wrongly down.
    let now = sim.now_ms();
    for m in sim.live() {
        for v in m.view(now) {
            let wrong = v.liveness == Liveness::Down && v.state.id != dead;
            assert!(!wrong, "seed {seed}: {:?} thinks {:?} is down", m.id(), v.state.id);
        }
    }
    println!(
        "N={n} seed={seed}: join known by all after {join_rounds} rounds (bound {spread_bound}); \
         death seen by all after {detect_rounds} rounds (bound {detect_bound}; phi-8 silence \
         {silence_min:.0}..{silence_max:.0} ms)"
    );
    Measured { join_rounds, detect_rounds }
}

#[test]
fn join_and_death_spread_in_log_n_rounds() {
    let seeds: u64 = std::env::var("KVS_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    for seed in 0..seeds {
        let small = run(100, seed);
        let large = run(1000, seed);
        // log2 1000 / log2 100 = 1.5; a linear spread would be 10x.
        let join_ratio = large.join_rounds as f64 / small.join_rounds as f64;
        let detect_ratio = large.detect_rounds as f64 / small.detect_rounds as f64;
        println!("seed={seed}: rounds 1000 vs 100 nodes: join x{join_ratio:.2}, death x{detect_ratio:.2}");
        assert!(join_ratio <= 2.0, "seed {seed}: join ratio {join_ratio}");
        assert!(detect_ratio <= 2.0, "seed {seed}: detection ratio {detect_ratio}");
    }
}
