//! The sweep file: what parses, and what every refusal says.

use std::collections::BTreeMap;

use expect_test::{expect, Expect};
use ferry_sweep::{EarlyStopping, Goal, Method, Param, ParamValue, SweepSpec};

const BASE: &str = r#"
name = "lr-search"
command = ["python", "train.py", "--lr", "{lr}", "--layers", "{layers}"]
max_trials = 500
max_parallel = 8
seed = 42

[objective]
metric = "val_loss"
goal = "minimize"

[method]
name = "tpe"
startup_trials = 10

[early_stopping]
rule = "asha"
min_steps = 1
max_steps = 81
reduction_factor = 3

[params.lr]
distribution = "log_uniform"
low = 1e-5
high = 1e-1

[params.layers]
distribution = "int"
low = 1
high = 8
step = 1

[params.optimizer]
distribution = "choice"
values = ["adam", "sgd"]

[trial]
gpus = 1
image = "pytorch:2"
env = { WANDB_MODE = "offline" }
"#;

/// Parses `BASE` with one substitution and checks the error message.
fn check(from: &str, to: &str, expected: Expect) {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    check_text(&BASE.replacen(from, to, 1), expected);
}

fn check_text(text: &str, expected: Expect) {
    match SweepSpec::parse(text) {
        Ok(spec) => panic!("parsed, but should not have: {spec:?}"),
        Err(e) => expected.assert_eq(&e.to_string()),
    }
}

#[test]
fn the_example_parses() {
    let spec = SweepSpec::parse(BASE).unwrap();
    assert_eq!(spec.name.as_deref(), Some("lr-search"));
    assert_eq!(spec.max_trials, 500);
    assert_eq!(spec.max_parallel, 8);
    assert_eq!(spec.seed, 42);
    assert_eq!(spec.objective.goal, Goal::Minimize);
    assert_eq!(spec.method, Method::Tpe { startup_trials: 10 });
    assert_eq!(spec.early_stopping, Some(EarlyStopping::Asha { min_steps: 1, max_steps: 81, reduction_factor: 3 }));
    assert_eq!(spec.params["lr"], Param::LogUniform { low: 1e-5, high: 1e-1, grid_points: None });
    assert_eq!(spec.params["layers"], Param::Int { low: 1, high: 8, step: 1 });
    assert_eq!(
        spec.params["optimizer"],
        Param::Choice { values: vec![ParamValue::Text("adam".into()), ParamValue::Text("sgd".into())] }
    );
    assert_eq!(spec.trial["gpus"].as_integer(), Some(1));
    assert_eq!(spec.trial["env"]["WANDB_MODE"].as_str(), Some("offline"));
}

#[test]
fn defaults() {
    let spec = SweepSpec::parse(
        r#"
        command = ["run"]
        max_trials = 2
        objective = { metric = "acc", goal = "maximize" }
        method = { name = "gp" }
        params.x = { distribution = "uniform", low = 0, high = 1 }
        "#,
    )
    .unwrap();
    assert_eq!(spec.max_parallel, 2, "the default 4, capped by max_trials");
    assert_eq!(spec.seed, 0);
    assert_eq!(spec.method, Method::Gp { startup_trials: 10 });
    assert_eq!(spec.early_stopping, None);
    assert!(spec.trial.is_empty());
    assert_eq!(spec.params["x"], Param::Uniform { low: 0.0, high: 1.0, grid_points: None });
}

#[test]
fn command_and_env() {
    let spec =
        SweepSpec::parse(&BASE.replace(r#""{layers}"]"#, r#""{layers}", "--opt={optimizer}", "{{x}}"]"#)).unwrap();
    let params = BTreeMap::from([
        ("lr".to_string(), ParamValue::Float(0.001)),
        ("layers".to_string(), ParamValue::Int(4)),
        ("optimizer".to_string(), ParamValue::Text("adam".into())),
    ]);
    assert_eq!(
        spec.command_for(&params),
        ["python", "train.py", "--lr", "0.001", "--layers", "4", "--opt=adam", "{x}"].map(String::from)
    );
    let env = spec.env_for(&params);
    expect![[r#"{"FERRY_PARAM_LAYERS": "4", "FERRY_PARAM_LR": "0.001", "FERRY_PARAM_OPTIMIZER": "adam"}"#]]
        .assert_eq(&format!("{env:?}"));
}

#[test]
fn param_values_display_and_round_trip() {
    let values = [
        ParamValue::Float(1e-5),
        ParamValue::Float(2.0),
        ParamValue::Int(2),
        ParamValue::Text("a".into()),
        ParamValue::Bool(true),
    ];
    let shown: Vec<String> = values.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["0.00001", "2", "2", "a", "true"]);
    let json = serde_json::to_string(&values).unwrap();
    assert_eq!(json, r#"[0.00001,2.0,2,"a",true]"#);
    let back: Vec<ParamValue> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, values);
}

#[test]
fn spec_round_trips_through_json() {
    let spec = SweepSpec::parse(BASE).unwrap();
    let back: SweepSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn syntax_errors_have_line_and_column() {
    check(
        "max_trials = 500",
        "max_trials = = 500",
        expect![[r#"
        cannot read the sweep file: TOML parse error at line 4, column 14
          |
        4 | max_trials = = 500
          |              ^
        extra `=`, expected nothing"#]],
    );
}

#[test]
fn unknown_fields_are_refused() {
    check(
        "seed = 42",
        "seed = 42\nretries = 3",
        expect![[r#"
        cannot read the sweep file: TOML parse error at line 7, column 1
          |
        7 | retries = 3
          | ^^^^^^^
        unknown field `retries`, expected one of `name`, `command`, `max_trials`, `max_parallel`, `seed`, `objective`, `method`, `early_stopping`, `params`, `trial`"#]],
    );
    check(
        "startup_trials = 10",
        "startup_trials = 10\ngamma = 0.25",
        expect![[r#"
        cannot read the sweep file: TOML parse error at line 15, column 1
           |
        15 | gamma = 0.25
           | ^^^^^
        unknown field `gamma`, expected `name` or `startup_trials`"#]],
    );
    check(
        "high = 8",
        "high = 8\nhigh_inclusive = true",
        expect![[r#"
        cannot read the sweep file: TOML parse error at line 31, column 1
           |
        31 | high_inclusive = true
           | ^^^^^^^^^^^^^^
        unknown field `high_inclusive`, expected one of `distribution`, `low`, `high`, `step`, `grid_points`, `values`"#]],
    );
}

#[test]
fn top_level_errors() {
    check("max_trials = 500", "max_trials = 0", expect!["`max_trials`: 0 is out of range; use a value in 1..=10000"]);
    check(
        "max_trials = 500",
        "max_trials = 20000",
        expect!["`max_trials`: 20000 is out of range; use a value in 1..=10000"],
    );
    check("max_trials = 500", "", expect!["`max_trials`: missing; add `max_trials = N` with N in 1..=10000"]);
    check("max_parallel = 8", "max_parallel = 501", expect!["`max_parallel`: 501 is more than max_trials = 500; lower max_parallel to at most max_trials, or raise max_trials"]);
    check("seed = 42", "seed = -1", expect!["`seed`: -1 is negative; use a seed >= 0"]);
    check(
        r#"command = ["python", "train.py", "--lr", "{lr}", "--layers", "{layers}"]"#,
        "command = []",
        expect![[r#"`command`: empty; give the program and its arguments, e.g. ["python", "train.py"]"#]],
    );
}

#[test]
fn placeholders_must_name_params() {
    check(r#""{layers}""#, r#""{depth}""#, expect!["`command[5]`: the placeholder {depth} names no parameter (the parameters are layers, lr, optimizer); add a [params.depth] table, fix the name, or write {{depth}} for literal braces"]);
    check(
        r#""{layers}""#,
        r#""{layers""#,
        expect![[r#"`command[5]`: `{` without a closing `}` in "{layers"; write `{{` and `}}` for literal braces"#]],
    );
    // A parameter the command never names is fine: every parameter is also an environment variable.
    SweepSpec::parse(&BASE.replace(r#", "--layers", "{layers}""#, "")).unwrap();
}

#[test]
fn objective_errors() {
    check(
        r#"metric = "val_loss""#,
        r#"metric = """#,
        expect![[r#"`objective.metric`: empty; name the MLflow metric the trials log, e.g. "val_loss""#]],
    );
    check(
        r#"goal = "minimize""#,
        r#"goal = "minimise""#,
        expect![[r#"`objective.goal`: unknown goal "minimise"; use "minimize" or "maximize""#]],
    );
}

#[test]
fn method_errors() {
    check(
        r#"name = "tpe""#,
        r#"name = "bayes""#,
        expect![[r#"`method.name`: unknown method "bayes"; use one of "grid", "random", "tpe", "gp""#]],
    );
    check(
        r#"name = "tpe""#,
        r#"name = "random""#,
        expect![[
            r#"`method.startup_trials`: does not apply to the random method; remove it, or use name = "tpe" or "gp""#
        ]],
    );
    check(
        "startup_trials = 10",
        "startup_trials = 0",
        expect!["`method.startup_trials`: 0 is out of range; use a value in 1..=500 (max_trials)"],
    );
}

#[test]
fn distribution_errors() {
    check(
        r#"distribution = "log_uniform""#,
        r#"distribution = "normal""#,
        expect![[
            r#"`params.lr.distribution`: unknown distribution "normal"; use one of "uniform", "log_uniform", "int", "choice""#
        ]],
    );
    check(
        r#"values = ["adam", "sgd"]"#,
        "values = []",
        expect![[
            r#"`params.optimizer.values`: the list is empty; list at least one value, e.g. `values = ["adam", "sgd"]`"#
        ]],
    );
    check(
        r#"values = ["adam", "sgd"]"#,
        r#"values = ["adam", "adam"]"#,
        expect!["`params.optimizer.values`: adam is listed twice; list each value once"],
    );
    check("high = 1e-1", "high = 1e-6", expect!["`params.lr.low`: low = 1e-5 is greater than high = 1e-6; swap them"]);
    check("high = 1e-1", "high = 1e-5", expect!["`params.lr.low`: low and high are both 1e-5, so there is nothing to search; widen the range, or make it a choice with one value"]);
    check(
        "low = 1e-5",
        "low = 0.0",
        expect![[
            r#"`params.lr.low`: log_uniform needs low > 0 (got 0.0); use a positive lower bound such as 1e-6, or distribution = "uniform""#
        ]],
    );
    check(
        "low = 1\n",
        "low = 1.5\n",
        expect![[
            r#"`params.layers.low`: int bounds must be integers (got 1.5); use a whole number, or distribution = "uniform""#
        ]],
    );
    check("step = 1", "step = 0", expect!["`params.layers.step`: 0 is not an integer >= 1; use e.g. `step = 2`"]);
    check(
        "step = 1",
        "grid_points = 3",
        expect![[
            r#"`params.layers.grid_points`: does not apply to distribution = "int"; remove it; the grid takes every integer, thinned by `step`"#
        ]],
    );
}

#[test]
fn ranges_too_wide_are_refused() {
    check(
        "high = 8",
        "high = 9223372036854775807",
        expect![[
            r#"`params.layers.high`: 1..=9223372036854775807 in steps of 1 has more than 2^53 values; narrow the range, raise `step`, or use distribution = "log_uniform""#
        ]],
    );
    let wide = BASE.replacen(
        r#""log_uniform"
low = 1e-5
high = 1e-1"#,
        r#""uniform"
low = -1.7e308
high = 1.7e308"#,
        1,
    );
    check_text(&wide, expect!["`params.lr.high`: the range is too wide to compute with; narrow it"]);
}

#[test]
fn grid_errors() {
    let grid = BASE.replace(r#"name = "tpe""#, r#"name = "grid""#).replace("startup_trials = 10\n", "");
    check_text(&grid, expect!["`params.lr.grid_points`: the grid method needs a number of points for a continuous parameter; add e.g. `grid_points = 5`, or use method random, tpe or gp"]);
    let grid = grid.replace("high = 1e-1\n", "high = 1e-1\ngrid_points = 100\n");
    check_text(&grid, expect!["`max_trials`: the grid has 1600 points (8 x 100 x 2), more than max_trials = 500; raise max_trials to 1600, or use fewer grid points"]);
    check_text(&grid.replace("grid_points = 100", "grid_points = 1000").replace("high = 8", "high = 800"), expect!["`max_trials`: the grid has 1600000 points (800 x 1000 x 2), more than max_trials = 500; use fewer grid points or a larger int step: a sweep has at most 10000 trials"]);
    // 100 x 8 x 2 = 1600 fits in 2000 trials.
    let spec = SweepSpec::parse(&grid.replace("max_trials = 500", "max_trials = 2000")).unwrap();
    assert_eq!(spec.grid_size(), 1600);
}

#[test]
fn early_stopping_errors() {
    check("max_steps = 81", "max_steps = 0", expect!["`early_stopping.max_steps`: 0 is not greater than min_steps = 1, so there is no rung to stop at; raise max_steps to the full budget in steps, or lower min_steps"]);
    check(
        "reduction_factor = 3",
        "reduction_factor = 1",
        expect!["`early_stopping.reduction_factor`: 1 is out of range; use a value in 2..=100; 3 is usual"],
    );
    check(
        r#"rule = "asha""#,
        r#"rule = "hyperband"
min_trials = 3"#,
        expect![
            "`early_stopping.min_trials`: does not apply to the hyperband rule; remove it (it is for the median rule)"
        ],
    );
    check(
        r#"rule = "asha""#,
        r#"rule = "median""#,
        expect![
            "`early_stopping.max_steps`: does not apply to the median rule; remove it (it is for asha and hyperband)"
        ],
    );
    check(
        r#"rule = "asha""#,
        r#"rule = "pbt""#,
        expect![[r#"`early_stopping.rule`: unknown rule "pbt"; use one of "asha", "hyperband", "median""#]],
    );
}
