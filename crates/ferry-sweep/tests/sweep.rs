//! The sweep state machine, driven the way the server drives it.

use std::collections::{BTreeMap, BTreeSet};

use ferry_sweep::{ParamValue, Proposal, StopDecision, Sweep, SweepSpec, TrialIndex, TrialOutcome};

fn spec(text: &str) -> SweepSpec {
    SweepSpec::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn float(params: &BTreeMap<String, ParamValue>, name: &str) -> f64 {
    match params[name] {
        ParamValue::Float(x) => x,
        ParamValue::Int(i) => i as f64,
        ref other => panic!("{name} is {other:?}"),
    }
}

fn two_d(method: &str, seed: u64, max_trials: u32, max_parallel: u32, early_stopping: &str) -> SweepSpec {
    spec(&format!(
        r#"
        command = ["train", "{{x}}", "{{y}}"]
        max_trials = {max_trials}
        max_parallel = {max_parallel}
        seed = {seed}
        objective = {{ metric = "loss", goal = "minimize" }}
        method = {{ name = "{method}" }}
        {early_stopping}
        [params.x]
        distribution = "uniform"
        low = -1
        high = 1
        [params.y]
        distribution = "uniform"
        low = -1
        high = 1
        "#
    ))
}

/// A 2-d quadratic bowl with its minimum 0 at (0.3, -0.2).
fn bowl(params: &BTreeMap<String, ParamValue>) -> f64 {
    (float(params, "x") - 0.3).powi(2) + (float(params, "y") + 0.2).powi(2)
}

/// A learning curve: starts high, decays to the bowl's value by step 20.
fn curve(params: &BTreeMap<String, ParamValue>, step: i64) -> f64 {
    bowl(params) + 2.0 * (-(step as f64) / 4.0).exp()
}

const STEPS: i64 = 20;

#[derive(Debug, PartialEq)]
enum Event {
    Proposed(Proposal),
    Stopped(StopDecision),
}

/// Drives a sweep in rounds like the server would: every running trial reports its next step in index order,
/// stop decisions are applied at once, trials at the last step complete, and new trials are proposed.
fn round(sweep: &mut Sweep, events: &mut Vec<Event>) {
    let running: Vec<(TrialIndex, i64)> = sweep
        .trials()
        .iter()
        .filter(|t| t.outcome.is_none())
        .map(|t| (t.index, t.values.last().map_or(0, |v| v.0)))
        .collect();
    let mut stopped = BTreeSet::new();
    for (index, last_step) in running {
        if stopped.contains(&index) {
            continue;
        }
        let step = last_step + 1;
        let params = sweep.trials()[index as usize].params.clone();
        for decision in sweep.report(index, step, curve(&params, step)) {
            sweep.finish(decision.index, TrialOutcome::Stopped);
            stopped.insert(decision.index);
            events.push(Event::Stopped(decision));
        }
        if step == STEPS && !stopped.contains(&index) {
            // Every seventh trial crashes at its end instead, to exercise failures.
            let outcome = if index % 7 == 6 { TrialOutcome::Failed } else { TrialOutcome::Completed };
            sweep.finish(index, outcome);
        }
    }
    events.extend(sweep.propose().into_iter().map(Event::Proposed));
}

#[test]
fn grid_enumerates_exactly_the_product() {
    let spec = spec(
        r#"
        command = ["run", "{a}", "{b}", "{c}"]
        max_trials = 100
        max_parallel = 100
        objective = { metric = "m", goal = "minimize" }
        method = { name = "grid" }
        params.a = { distribution = "int", low = 1, high = 5, step = 2 }
        params.b = { distribution = "choice", values = ["x", true, 2.5] }
        params.c = { distribution = "log_uniform", low = 0.001, high = 0.1, grid_points = 3 }
        "#,
    );
    let mut sweep = Sweep::new(spec);
    let proposals = sweep.propose();
    assert_eq!(proposals.len(), 27, "3 x 3 x 3, not max_trials");
    let shown: Vec<String> =
        proposals.iter().map(|p| p.params.values().map(ToString::to_string).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(shown[..4], ["1 x 0.001", "1 x 0.01", "1 x 0.1", "1 true 0.001"]);
    assert_eq!(shown[26], "5 2.5 0.1");
    let distinct: BTreeSet<&String> = shown.iter().collect();
    assert_eq!(distinct.len(), 27);
    assert!(proposals.iter().enumerate().all(|(i, p)| p.index == i as u32));
    assert!(!sweep.is_done());
    assert!(sweep.propose().is_empty(), "the grid is exhausted");
    for p in &proposals {
        sweep.finish(p.index, TrialOutcome::Completed);
    }
    assert!(sweep.is_done());
    assert!(sweep.propose().is_empty());
}

#[test]
fn random_is_reproducible_and_in_bounds() {
    let text = r#"
        command = ["run"]
        max_trials = 4000
        max_parallel = 4000
        seed = 7
        objective = { metric = "m", goal = "minimize" }
        method = { name = "random" }
        params.lr = { distribution = "log_uniform", low = 1e-5, high = 1e-1 }
        params.n = { distribution = "int", low = -3, high = 3 }
        params.opt = { distribution = "choice", values = ["adam", "sgd"] }
    "#;
    let a = Sweep::new(spec(text)).propose();
    let b = Sweep::new(spec(text)).propose();
    assert_eq!(a, b, "same seed, same draws");
    let c = Sweep::new(spec(&text.replace("seed = 7", "seed = 8"))).propose();
    assert_ne!(a[0].params, c[0].params, "another seed, other draws");

    let mut decades = [0usize; 4];
    let mut ints = BTreeMap::new();
    for p in &a {
        let lr = float(&p.params, "lr");
        assert!((1e-5..=1e-1).contains(&lr), "{lr}");
        decades[((lr.log10() + 5.0).floor() as usize).min(3)] += 1;
        let ParamValue::Int(n) = p.params["n"] else { panic!() };
        *ints.entry(n).or_insert(0usize) += 1;
    }
    // Log-uniform: each decade gets about a quarter of the draws (1000 +- 4.5 sigma).
    for count in decades {
        assert!((880..=1120).contains(&count), "{decades:?}");
    }
    assert_eq!(ints.keys().copied().collect::<Vec<_>>(), (-3..=3).collect::<Vec<_>>(), "ends included");
}

#[test]
fn proposals_are_stable_across_versions() {
    // A persisted sweep restored by a newer Ferry must continue with the same draws: this pins the streams.
    let mut sweep = Sweep::new(two_d("random", 42, 10, 3, ""));
    let shown: Vec<String> = sweep.propose().iter().map(|p| format!("{} {}", p.params["x"], p.params["y"])).collect();
    expect_test::expect![[r#"
        [
            "-0.303491062904 -0.428602857474",
            "0.0487134864617 -0.697678645249",
            "-0.00326994060771 -0.343617766163",
        ]
    "#]]
    .assert_debug_eq(&shown);
}

#[test]
fn propose_respects_max_parallel_and_max_trials() {
    let mut sweep = Sweep::new(two_d("random", 1, 10, 4, ""));
    let first = sweep.propose();
    assert_eq!(first.iter().map(|p| p.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert!(sweep.propose().is_empty(), "4 running already");
    sweep.finish(1, TrialOutcome::Completed);
    sweep.finish(2, TrialOutcome::Failed);
    assert_eq!(sweep.propose().iter().map(|p| p.index).collect::<Vec<_>>(), [4, 5]);
    for i in 0..6 {
        sweep.finish(i, TrialOutcome::Stopped);
    }
    assert_eq!(sweep.propose().len(), 4);
    for i in 6..10 {
        sweep.finish(i, TrialOutcome::Completed);
    }
    assert!(sweep.propose().is_empty(), "max_trials reached");
    assert!(sweep.is_done());
    assert_eq!(sweep.trials().len(), 10);
}

#[test]
fn parallel_proposals_differ_and_cost_little() {
    // 500 trials, TPE past its startup: one call proposes max_parallel distinct points.
    let mut sweep = Sweep::new(two_d("tpe", 3, 500, 8, ""));
    for _ in 0..3 {
        for p in sweep.propose() {
            sweep.report(p.index, 1, bowl(&p.params));
            sweep.finish(p.index, TrialOutcome::Completed);
        }
    }
    let batch = sweep.propose();
    assert_eq!(batch.len(), 8);
    let distinct: BTreeSet<String> = batch.iter().map(|p| format!("{:?}", p.params)).collect();
    assert_eq!(distinct.len(), 8);
}

fn restore_gives_the_same_future(spec: SweepSpec) {
    let mut a = Sweep::new(spec.clone());
    let mut events = Vec::new();
    while a.trials().len() < 30 {
        round(&mut a, &mut events);
    }
    let mut b = Sweep::restore(spec, a.trials().to_vec());
    assert_eq!(b, a, "the restored sweep is the very same state");
    let (mut after_a, mut after_b) = (Vec::new(), Vec::new());
    while after_a.iter().filter(|e| matches!(e, Event::Proposed(_))).count() < 10 {
        round(&mut a, &mut after_a);
        round(&mut b, &mut after_b);
    }
    assert_eq!(after_a, after_b);
    let stops = events.iter().chain(&after_a).filter(|e| matches!(e, Event::Stopped(_))).count();
    assert!(stops > 0, "the rule stopped someone");
}

#[test]
fn restore_gives_the_same_future_tpe_asha() {
    let asha = r#"early_stopping = { rule = "asha", min_steps = 2, max_steps = 20, reduction_factor = 2 }"#;
    restore_gives_the_same_future(two_d("tpe", 11, 200, 4, asha));
}

#[test]
fn restore_gives_the_same_future_gp_median() {
    let median = r#"early_stopping = { rule = "median", min_steps = 3, min_trials = 3 }"#;
    restore_gives_the_same_future(two_d("gp", 12, 200, 4, median));
}

#[test]
fn restore_gives_the_same_future_random_hyperband() {
    let hyperband = r#"early_stopping = { rule = "hyperband", min_steps = 1, max_steps = 20, reduction_factor = 3 }"#;
    restore_gives_the_same_future(two_d("random", 13, 200, 6, hyperband));
}

/// A sweep with `n` running trials and the given rule.
fn running(n: u32, goal: &str, early_stopping: &str) -> Sweep {
    let mut sweep = Sweep::new(spec(&format!(
        r#"
        command = ["run"]
        max_trials = 100
        max_parallel = {n}
        objective = {{ metric = "val_loss", goal = "{goal}" }}
        method = {{ name = "random" }}
        early_stopping = {early_stopping}
        params.x = {{ distribution = "uniform", low = 0, high = 1 }}
        "#
    )));
    assert_eq!(sweep.propose().len(), n as usize);
    sweep
}

#[test]
fn asha_stops_the_bad_trial_at_the_rung_and_keeps_the_good_one() {
    let asha = r#"{ rule = "asha", min_steps = 1, max_steps = 81, reduction_factor = 3 }"#;
    let mut sweep = running(5, "minimize", asha);
    // Rung 0 is step 1. Two values are too few to judge with rf = 3.
    assert!(sweep.report(0, 1, 0.5).is_empty());
    assert!(sweep.report(1, 1, 0.6).is_empty());
    // The third value makes a top third of one: 0.9 is out.
    let stop = sweep.report(2, 1, 0.9);
    assert_eq!(
        stop,
        [StopDecision {
            index: 2,
            reason:
                "val_loss 0.9 at step 1 is not in the top 1/3 of the 3 trials at ASHA rung 0 (step 1): the cut-off \
                     is 0.5"
                    .into()
        }]
    );
    // The good one continues at rung 0; steps between rungs are never judged.
    assert!(sweep.report(3, 1, 0.1).is_empty());
    assert!(sweep.report(3, 2, 5.0).is_empty());
    // A first report past several rungs records them all (steps 1, 3 and 9 here).
    assert!(sweep.report(4, 10, 0.05).is_empty());
    // The stopped trial's later reports repeat nothing while its stop is pending.
    assert!(sweep.report(2, 2, 0.9).is_empty());
    sweep.finish(2, TrialOutcome::Stopped);
    assert!(sweep.report(2, 3, 0.9).is_empty(), "ended trials are ignored");
}

#[test]
fn asha_respects_maximize() {
    let asha = r#"{ rule = "asha", min_steps = 1, max_steps = 81, reduction_factor = 3 }"#;
    let mut sweep = running(3, "maximize", asha);
    assert!(sweep.report(0, 1, 0.5).is_empty());
    assert!(sweep.report(1, 1, 0.9).is_empty());
    let stop = sweep.report(2, 1, 0.6);
    assert_eq!(stop.len(), 1);
    assert!(stop[0].reason.contains("val_loss 0.6 at step 1") && stop[0].reason.contains("cut-off is 0.9"), "{stop:?}");
}

#[test]
fn hyperband_compares_within_a_bracket() {
    let hyperband = r#"{ rule = "hyperband", min_steps = 1, max_steps = 9, reduction_factor = 2 }"#;
    let mut sweep = running(8, "minimize", hyperband);
    // Brackets for rf 2 and max 9: first rungs 1, 2, 4, 8, and one without rungs: 5 brackets, trial i in i % 5.
    // Trials 0 and 5 share bracket 0 (rungs 1, 2, 4, 8); trial 1 is in bracket 1 (rungs 2, 4, 8).
    assert!(sweep.report(0, 1, 0.1).is_empty());
    assert!(sweep.report(1, 1, 9.0).is_empty(), "bracket 1 has no rung at step 1");
    let stop = sweep.report(5, 1, 0.2);
    assert_eq!(stop.len(), 1);
    assert!(stop[0].reason.contains("rung 0 (step 1) of Hyperband bracket 0"), "{}", stop[0].reason);
    // Trial 4 runs in the bracket without rungs: never stopped.
    for step in 1..=9 {
        assert!(sweep.report(4, step, 100.0).is_empty());
    }
}

#[test]
fn median_rule_stops_the_bad_trial_and_keeps_the_good_one() {
    let median = r#"{ rule = "median", min_steps = 3, min_trials = 3 }"#;
    let mut sweep = running(6, "minimize", median);
    // Three trials with running averages at step 3 of 1.0, 2.0 and 3.0 (median 2.0).
    for (index, level) in [(0, 1.0), (1, 2.0), (2, 3.0)] {
        for step in 1..=4 {
            assert!(sweep.report(index, step, level).is_empty());
        }
    }
    // Before min_steps nobody is judged, however bad.
    assert!(sweep.report(3, 1, 10.0).is_empty());
    assert!(sweep.report(3, 2, 10.0).is_empty());
    let stop = sweep.report(3, 3, 2.5);
    assert_eq!(
        stop,
        [StopDecision {
            index: 3,
            reason: "val_loss 2.5 (its best by step 3) is worse than the median 2 of the running averages of 3 other \
                     trials at that step (median rule)"
                .into()
        }]
    );
    // Better than the median: continues.
    for step in 1..=3 {
        assert!(sweep.report(4, step, 1.5).is_empty());
    }
    // Trial 5 reports past step 4, where only two trials reached: too few to judge.
    assert!(sweep.report(5, 5, 50.0).is_empty());
}

#[test]
fn median_rule_respects_maximize() {
    let median = r#"{ rule = "median", min_steps = 1, min_trials = 2 }"#;
    let mut sweep = running(3, "maximize", median);
    assert!(sweep.report(0, 1, 0.9).is_empty());
    assert!(sweep.report(1, 1, 0.7).is_empty());
    assert!(sweep.report(2, 1, 0.85).is_empty(), "0.85 beats the median accuracy 0.8");
    let mut sweep = running(3, "maximize", median);
    sweep.report(0, 1, 0.9);
    sweep.report(1, 1, 0.7);
    assert_eq!(sweep.report(2, 1, 0.75).len(), 1, "0.75 is below the median accuracy 0.8");
}

#[test]
fn best_follows_the_goal_and_counts_only_completed_trials() {
    for (goal, expected) in [("minimize", (1, 0.2)), ("maximize", (0, 0.9))] {
        let mut sweep = running(4, goal, r#"{ rule = "median" }"#);
        assert_eq!(sweep.best(), None);
        sweep.report(0, 1, 0.9);
        sweep.report(1, 1, 0.5);
        sweep.report(1, 2, 0.2);
        sweep.report(1, 1, 0.8); // an older step reported late: not the last value
        sweep.report(2, 1, 0.0);
        sweep.report(3, 1, 5.0);
        sweep.finish(0, TrialOutcome::Completed);
        sweep.finish(1, TrialOutcome::Completed);
        sweep.finish(2, TrialOutcome::Stopped);
        sweep.finish(3, TrialOutcome::Failed);
        assert_eq!(sweep.best(), Some(expected), "{goal}");
    }
}

#[test]
fn non_finite_and_unknown_reports_are_ignored() {
    let mut sweep = running(2, "minimize", r#"{ rule = "median", min_steps = 1, min_trials = 1 }"#);
    assert!(sweep.report(0, 1, f64::NAN).is_empty());
    assert!(sweep.report(0, 1, f64::INFINITY).is_empty());
    assert!(sweep.report(0, 1, f64::NEG_INFINITY).is_empty());
    assert!(sweep.report(99, 1, 1.0).is_empty());
    assert!(sweep.trials().iter().all(|t| t.values.is_empty()));
    sweep.finish(99, TrialOutcome::Completed);
    sweep.finish(0, TrialOutcome::Completed);
    sweep.finish(0, TrialOutcome::Failed);
    assert_eq!(sweep.trials()[0].outcome, Some(TrialOutcome::Completed), "the first end counts");
    assert_eq!(sweep.best(), None, "a completed trial without a value has no objective");
}

#[test]
fn tpe_beats_random_on_a_quadratic() {
    // 10 seeds x 60 sequential trials each; the mean best distance to the optimum.
    let mean_best = |method: &str| -> f64 {
        let mut total = 0.0;
        for seed in 0..10 {
            let mut sweep = Sweep::new(two_d(method, seed, 60, 1, ""));
            while !sweep.is_done() {
                for p in sweep.propose() {
                    sweep.report(p.index, 1, bowl(&p.params));
                    sweep.finish(p.index, TrialOutcome::Completed);
                }
            }
            total += sweep.best().unwrap().1;
        }
        total / 10.0
    };
    let random = mean_best("random");
    let tpe = mean_best("tpe");
    let gp = mean_best("gp");
    eprintln!("mean best over 10 seeds: random {random:.5}, tpe {tpe:.5}, gp {gp:.5}");
    assert!(tpe * 3.0 < random, "tpe {tpe} vs random {random}");
    assert!(gp * 3.0 < random, "gp {gp} vs random {random}");
}
