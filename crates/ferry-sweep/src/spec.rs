//! The sweep file: TOML in, a validated [`SweepSpec`] out, and the per-trial command and environment.
//!
//! Parsing goes through loose `Raw*` structs (every field optional, unknown fields denied) and then one validation
//! pass that checks each field and says what is wrong and how to fix it, naming the field by its TOML path
//! (`params.lr.low`). A deserialized `SweepSpec` (for example read back from the server's database) is not
//! validated again: [`SweepSpec::parse`] is the one door for user input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ParamValue;

/// The most trials one sweep may create; it bounds the sweep's memory and every per-report scan.
pub const MAX_TRIALS_MAX: u32 = 10_000;
/// Trials running at once when the file does not say.
pub const MAX_PARALLEL_DEFAULT: u32 = 4;
/// Random trials before TPE or GP start modelling, when the file does not say.
const STARTUP_TRIALS_DEFAULT: u32 = 10;
/// Parameters in one sweep; far beyond what a model-based search handles well.
const PARAMS_MAX: usize = 64;
/// Values of one `choice` parameter.
const CHOICE_VALUES_MAX: usize = 1_000;
/// Grid points of one continuous parameter.
const GRID_POINTS_MAX: u32 = 1_000;
/// Integer levels of one `int` parameter: the unit-interval encoding of the models resolves 2^53 of them.
const INT_LEVELS_MAX: u64 = 1 << 53;
/// Arguments of the command.
const COMMAND_ARGS_MAX: usize = 1_000;
/// Largest reduction factor of ASHA and Hyperband; beyond it a rung keeps nobody.
const REDUCTION_FACTOR_MAX: u32 = 100;
/// Median rule: the grace period and the required trials when the file does not say.
const MEDIAN_MIN_STEPS_DEFAULT: i64 = 1;
const MEDIAN_MIN_TRIALS_DEFAULT: u32 = 5;
/// ASHA and Hyperband defaults.
const ASHA_MIN_STEPS_DEFAULT: i64 = 1;
const REDUCTION_FACTOR_DEFAULT: u32 = 3;

/// A validated sweep file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    pub name: Option<String>,
    /// The command of every trial, with `{param}` placeholders (`{{` and `}}` are literal braces).
    pub command: Vec<String>,
    pub max_trials: u32,
    pub max_parallel: u32,
    pub seed: u64,
    pub objective: Objective,
    pub method: Method,
    pub early_stopping: Option<EarlyStopping>,
    pub params: BTreeMap<String, Param>,
    /// The `[trial]` table, untouched: resources, image, pool, env; the server reads it.
    pub trial: toml::Table,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// The MLflow metric key the trials log.
    pub metric: String,
    pub goal: Goal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    Minimize,
    Maximize,
}

impl Goal {
    /// The value turned so that smaller is better; every rule and model works on this.
    pub fn loss(self, value: f64) -> f64 {
        match self {
            Goal::Minimize => value,
            Goal::Maximize => -value,
        }
    }

    /// Whether `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        self.loss(a) < self.loss(b)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Method {
    Grid,
    Random,
    Tpe { startup_trials: u32 },
    Gp { startup_trials: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum EarlyStopping {
    Asha {
        min_steps: i64,
        max_steps: i64,
        reduction_factor: u32,
    },
    /// ASHA brackets with first rungs `min_steps * reduction_factor^s`; trial `i` runs in bracket `i % brackets`.
    Hyperband {
        min_steps: i64,
        max_steps: i64,
        reduction_factor: u32,
    },
    Median {
        min_steps: i64,
        min_trials: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case")]
pub enum Param {
    Uniform { low: f64, high: f64, grid_points: Option<u32> },
    LogUniform { low: f64, high: f64, grid_points: Option<u32> },
    Int { low: i64, high: i64, step: i64 },
    Choice { values: Vec<ParamValue> },
}

/// Why a sweep file was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum SpecError {
    /// TOML syntax, a wrong type or an unknown field; toml's message carries the line and column.
    #[error("cannot read the sweep file: {0}")]
    Toml(String),
    /// A field has a value the sweep cannot use.
    #[error("`{field}`: {problem}; {fix}")]
    Invalid { field: String, problem: String, fix: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> SpecError {
    SpecError::Invalid { field: field.into(), problem: problem.into(), fix: fix.into() }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    command: Option<Vec<String>>,
    max_trials: Option<i64>,
    max_parallel: Option<i64>,
    seed: Option<i64>,
    objective: Option<RawObjective>,
    method: Option<RawMethod>,
    early_stopping: Option<RawEarlyStopping>,
    params: Option<BTreeMap<String, RawParam>>,
    trial: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjective {
    metric: Option<String>,
    goal: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMethod {
    name: Option<String>,
    startup_trials: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEarlyStopping {
    rule: Option<String>,
    min_steps: Option<i64>,
    max_steps: Option<i64>,
    reduction_factor: Option<i64>,
    min_trials: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    distribution: Option<String>,
    low: Option<toml::Value>,
    high: Option<toml::Value>,
    step: Option<toml::Value>,
    grid_points: Option<i64>,
    values: Option<Vec<toml::Value>>,
}

impl SweepSpec {
    /// Parses and validates a sweep file.
    pub fn parse(text: &str) -> Result<SweepSpec, SpecError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::Toml(e.to_string().trim_end().to_string()))?;
        validate(raw)
    }

    /// The trial's command: every `{name}` replaced by the value of `name`; a placeholder with no value stays as
    /// written.
    pub fn command_for(&self, params: &BTreeMap<String, ParamValue>) -> Vec<String> {
        self.command
            .iter()
            .map(|arg| {
                let Ok(pieces) = template(arg) else { return arg.clone() };
                let mut out = String::with_capacity(arg.len());
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => out.push_str(&text),
                        Piece::Param(name) => match params.get(&name) {
                            Some(value) => out.push_str(&value.to_string()),
                            None => out.push_str(&format!("{{{name}}}")),
                        },
                    }
                }
                out
            })
            .collect()
    }

    /// The trial's parameters as environment variables: `FERRY_PARAM_<NAME>`, the name upper-cased with every
    /// character other than a letter or digit turned into `_`.
    pub fn env_for(&self, params: &BTreeMap<String, ParamValue>) -> BTreeMap<String, String> {
        params.iter().map(|(name, value)| (env_name(name), value.to_string())).collect()
    }

    /// How many trials the grid method can make: the product of every parameter's grid size (saturating).
    pub fn grid_size(&self) -> u64 {
        self.params.values().map(|p| p.grid_len().unwrap_or(0)).fold(1u64, |acc, n| acc.saturating_mul(n))
    }
}

impl Param {
    /// The number of grid points, or `None` for a continuous parameter without `grid_points`.
    pub(crate) fn grid_len(&self) -> Option<u64> {
        match self {
            Param::Uniform { grid_points, .. } | Param::LogUniform { grid_points, .. } => grid_points.map(u64::from),
            Param::Int { low, high, step } => {
                u64::try_from((i128::from(*high) - i128::from(*low)) / i128::from(*step) + 1).ok()
            }
            Param::Choice { values } => Some(values.len() as u64),
        }
    }
}

fn env_name(param: &str) -> String {
    let suffix: String =
        param.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("FERRY_PARAM_{suffix}")
}

enum Piece {
    Text(String),
    Param(String),
}

/// Splits one command argument into text and `{name}` placeholders; `{{` and `}}` are literal braces.
fn template(arg: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("`{{` without a closing `}}` in {arg:?}")),
                    }
                }
                if name.is_empty() {
                    return Err(format!("an empty placeholder `{{}}` in {arg:?}"));
                }
                pieces.push(Piece::Text(std::mem::take(&mut text)));
                pieces.push(Piece::Param(name));
            }
            '}' => return Err(format!("a `}}` without an opening `{{` in {arg:?}")),
            c => text.push(c),
        }
    }
    pieces.push(Piece::Text(text));
    Ok(pieces)
}

fn validate(raw: RawSpec) -> Result<SweepSpec, SpecError> {
    let max_trials = match raw.max_trials {
        None => {
            return Err(invalid(
                "max_trials",
                "missing",
                format!("add `max_trials = N` with N in 1..={MAX_TRIALS_MAX}"),
            ))
        }
        Some(n) if !(1..=i64::from(MAX_TRIALS_MAX)).contains(&n) => {
            return Err(invalid(
                "max_trials",
                format!("{n} is out of range"),
                format!("use a value in 1..={MAX_TRIALS_MAX}"),
            ))
        }
        Some(n) => n as u32,
    };
    let max_parallel = match raw.max_parallel {
        None => MAX_PARALLEL_DEFAULT.min(max_trials),
        Some(n) if n < 1 => return Err(invalid("max_parallel", format!("{n} is below 1"), "use at least 1")),
        Some(n) if n > i64::from(max_trials) => {
            return Err(invalid(
                "max_parallel",
                format!("{n} is more than max_trials = {max_trials}"),
                "lower max_parallel to at most max_trials, or raise max_trials",
            ))
        }
        Some(n) => n as u32,
    };
    let seed = match raw.seed {
        None => 0,
        Some(n) if n < 0 => return Err(invalid("seed", format!("{n} is negative"), "use a seed >= 0")),
        Some(n) => n as u64,
    };
    if let Some(name) = &raw.name {
        if name.trim().is_empty() {
            return Err(invalid("name", "empty", "give the sweep a name or remove the `name` line"));
        }
    }
    let objective = validate_objective(raw.objective)?;
    let method = validate_method(raw.method, max_trials)?;
    let early_stopping = raw.early_stopping.map(validate_early_stopping).transpose()?;
    let params = validate_params(raw.params)?;
    let command = validate_command(raw.command, &params)?;
    let spec = SweepSpec {
        name: raw.name,
        command,
        max_trials,
        max_parallel,
        seed,
        objective,
        method,
        early_stopping,
        params,
        trial: raw.trial.unwrap_or_default(),
    };
    if method == Method::Grid {
        validate_grid(&spec)?;
    }
    Ok(spec)
}

fn validate_objective(raw: Option<RawObjective>) -> Result<Objective, SpecError> {
    let fix_table = "add an [objective] table with `metric = \"val_loss\"` and `goal = \"minimize\"`";
    let Some(raw) = raw else { return Err(invalid("objective", "missing", fix_table)) };
    let metric = match raw.metric {
        Some(m) if !m.trim().is_empty() => m,
        Some(_) => {
            return Err(invalid(
                "objective.metric",
                "empty",
                "name the MLflow metric the trials log, e.g. \"val_loss\"",
            ))
        }
        None => {
            return Err(invalid("objective.metric", "missing", "add `metric = \"val_loss\"` (the MLflow metric key)"))
        }
    };
    let goal = match raw.goal.as_deref() {
        Some("minimize") => Goal::Minimize,
        Some("maximize") => Goal::Maximize,
        Some(other) => {
            return Err(invalid(
                "objective.goal",
                format!("unknown goal {other:?}"),
                "use \"minimize\" or \"maximize\"",
            ))
        }
        None => return Err(invalid("objective.goal", "missing", "add `goal = \"minimize\"` or `goal = \"maximize\"`")),
    };
    Ok(Objective { metric, goal })
}

fn validate_method(raw: Option<RawMethod>, max_trials: u32) -> Result<Method, SpecError> {
    let valid = "use one of \"grid\", \"random\", \"tpe\", \"gp\"";
    let Some(raw) = raw else {
        return Err(invalid("method", "missing", format!("add a [method] table with `name = ...`; {valid}")));
    };
    let Some(name) = raw.name else { return Err(invalid("method.name", "missing", valid)) };
    let startup_trials = match raw.startup_trials {
        None => STARTUP_TRIALS_DEFAULT,
        Some(n) if !(1..=i64::from(max_trials)).contains(&n) => {
            return Err(invalid(
                "method.startup_trials",
                format!("{n} is out of range"),
                format!("use a value in 1..={max_trials} (max_trials)"),
            ))
        }
        Some(n) => n as u32,
    };
    let model_only = |method: &str| {
        invalid(
            "method.startup_trials",
            format!("does not apply to the {method} method"),
            "remove it, or use name = \"tpe\" or \"gp\"",
        )
    };
    match name.as_str() {
        "grid" | "random" if raw.startup_trials.is_some() => Err(model_only(&name)),
        "grid" => Ok(Method::Grid),
        "random" => Ok(Method::Random),
        "tpe" => Ok(Method::Tpe { startup_trials }),
        "gp" => Ok(Method::Gp { startup_trials }),
        other => Err(invalid("method.name", format!("unknown method {other:?}"), valid)),
    }
}

fn validate_early_stopping(raw: RawEarlyStopping) -> Result<EarlyStopping, SpecError> {
    let valid = "use one of \"asha\", \"hyperband\", \"median\"";
    let Some(rule) = raw.rule else { return Err(invalid("early_stopping.rule", "missing", valid)) };
    let not_for = |field: &str, rule: &str, for_rules: &str| {
        invalid(
            format!("early_stopping.{field}"),
            format!("does not apply to the {rule} rule"),
            format!("remove it (it is for {for_rules})"),
        )
    };
    let min_steps = |default: i64| match raw.min_steps {
        None => Ok(default),
        Some(n) if n < 1 => Err(invalid("early_stopping.min_steps", format!("{n} is below 1"), "use at least 1")),
        Some(n) => Ok(n),
    };
    match rule.as_str() {
        "asha" | "hyperband" => {
            if raw.min_trials.is_some() {
                return Err(not_for("min_trials", &rule, "the median rule"));
            }
            let min_steps = min_steps(ASHA_MIN_STEPS_DEFAULT)?;
            let Some(max_steps) = raw.max_steps else {
                return Err(invalid(
                    "early_stopping.max_steps",
                    "missing",
                    "add `max_steps = N`, the step at which a trial has its full budget",
                ));
            };
            if max_steps <= min_steps {
                return Err(invalid(
                    "early_stopping.max_steps",
                    format!("{max_steps} is not greater than min_steps = {min_steps}, so there is no rung to stop at"),
                    "raise max_steps to the full budget in steps, or lower min_steps",
                ));
            }
            let reduction_factor = match raw.reduction_factor {
                None => REDUCTION_FACTOR_DEFAULT,
                Some(n) if !(2..=i64::from(REDUCTION_FACTOR_MAX)).contains(&n) => {
                    return Err(invalid(
                        "early_stopping.reduction_factor",
                        format!("{n} is out of range"),
                        format!("use a value in 2..={REDUCTION_FACTOR_MAX}; 3 is usual"),
                    ))
                }
                Some(n) => n as u32,
            };
            Ok(if rule == "asha" {
                EarlyStopping::Asha { min_steps, max_steps, reduction_factor }
            } else {
                EarlyStopping::Hyperband { min_steps, max_steps, reduction_factor }
            })
        }
        "median" => {
            if raw.max_steps.is_some() {
                return Err(not_for("max_steps", &rule, "asha and hyperband"));
            }
            if raw.reduction_factor.is_some() {
                return Err(not_for("reduction_factor", &rule, "asha and hyperband"));
            }
            let min_steps = min_steps(MEDIAN_MIN_STEPS_DEFAULT)?;
            let min_trials = match raw.min_trials {
                None => MEDIAN_MIN_TRIALS_DEFAULT,
                Some(n) if !(1..=i64::from(MAX_TRIALS_MAX)).contains(&n) => {
                    return Err(invalid(
                        "early_stopping.min_trials",
                        format!("{n} is out of range"),
                        format!("use a value in 1..={MAX_TRIALS_MAX}; 5 is usual"),
                    ))
                }
                Some(n) => n as u32,
            };
            Ok(EarlyStopping::Median { min_steps, min_trials })
        }
        other => Err(invalid("early_stopping.rule", format!("unknown rule {other:?}"), valid)),
    }
}

fn validate_params(raw: Option<BTreeMap<String, RawParam>>) -> Result<BTreeMap<String, Param>, SpecError> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        return Err(invalid(
            "params",
            "no parameter to search",
            "add at least one table like [params.lr] with `distribution = \"log_uniform\"`, `low` and `high`",
        ));
    }
    if raw.len() > PARAMS_MAX {
        return Err(invalid("params", format!("{} parameters", raw.len()), format!("use at most {PARAMS_MAX}")));
    }
    let mut env_names: BTreeMap<String, &str> = BTreeMap::new();
    let mut params = BTreeMap::new();
    for (name, raw) in &raw {
        let field = format!("params.{name}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(invalid(
                field,
                "the name has characters a placeholder cannot hold",
                "use only letters, digits, `_` and `-`",
            ));
        }
        if let Some(other) = env_names.insert(env_name(name), name) {
            return Err(invalid(
                field,
                format!("its environment variable {} is also the one of params.{other}", env_name(name)),
                "rename one of them",
            ));
        }
        params.insert(name.clone(), validate_param(&field, raw)?);
    }
    Ok(params)
}

fn validate_param(field: &str, raw: &RawParam) -> Result<Param, SpecError> {
    let valid = "use one of \"uniform\", \"log_uniform\", \"int\", \"choice\"";
    let Some(distribution) = raw.distribution.as_deref() else {
        return Err(invalid(format!("{field}.distribution"), "missing", valid));
    };
    let not_for = |key: &str, fix: &str| {
        invalid(format!("{field}.{key}"), format!("does not apply to distribution = {distribution:?}"), fix)
    };
    match distribution {
        "uniform" | "log_uniform" => {
            if raw.step.is_some() {
                return Err(not_for(
                    "step",
                    "remove it; use grid_points for the grid method, or distribution = \"int\"",
                ));
            }
            if raw.values.is_some() {
                return Err(not_for("values", "remove it, or use distribution = \"choice\""));
            }
            let low = float_bound(field, "low", raw.low.as_ref())?;
            let high = float_bound(field, "high", raw.high.as_ref())?;
            check_order(field, low, high)?;
            if !(high - low).is_finite() {
                return Err(invalid(format!("{field}.high"), "the range is too wide to compute with", "narrow it"));
            }
            if distribution == "log_uniform" && low <= 0.0 {
                return Err(invalid(
                    format!("{field}.low"),
                    format!("log_uniform needs low > 0 (got {low:?})"),
                    "use a positive lower bound such as 1e-6, or distribution = \"uniform\"",
                ));
            }
            let grid_points = match raw.grid_points {
                None => None,
                Some(n) if !(2..=i64::from(GRID_POINTS_MAX)).contains(&n) => {
                    return Err(invalid(
                        format!("{field}.grid_points"),
                        format!("{n} is out of range"),
                        format!("use a value in 2..={GRID_POINTS_MAX}"),
                    ))
                }
                Some(n) => Some(n as u32),
            };
            Ok(if distribution == "uniform" {
                Param::Uniform { low, high, grid_points }
            } else {
                Param::LogUniform { low, high, grid_points }
            })
        }
        "int" => {
            if raw.grid_points.is_some() {
                return Err(not_for("grid_points", "remove it; the grid takes every integer, thinned by `step`"));
            }
            if raw.values.is_some() {
                return Err(not_for("values", "remove it, or use distribution = \"choice\""));
            }
            let low = int_bound(field, "low", raw.low.as_ref())?;
            let high = int_bound(field, "high", raw.high.as_ref())?;
            check_order(field, low, high)?;
            let step = match &raw.step {
                None => 1,
                Some(v) => match int_value(v) {
                    Some(s) if s >= 1 => s,
                    _ => {
                        return Err(invalid(
                            format!("{field}.step"),
                            format!("{v} is not an integer >= 1"),
                            "use e.g. `step = 2`",
                        ))
                    }
                },
            };
            let param = Param::Int { low, high, step };
            if param.grid_len().is_none_or(|n| n > INT_LEVELS_MAX) {
                return Err(invalid(
                    format!("{field}.high"),
                    format!("{low}..={high} in steps of {step} has more than 2^53 values"),
                    "narrow the range, raise `step`, or use distribution = \"log_uniform\"",
                ));
            }
            Ok(param)
        }
        "choice" => {
            for (key, set) in [("low", raw.low.is_some()), ("high", raw.high.is_some()), ("step", raw.step.is_some())] {
                if set {
                    return Err(not_for(key, "remove it; a choice lists its `values`"));
                }
            }
            if raw.grid_points.is_some() {
                return Err(not_for("grid_points", "remove it; the grid takes every value"));
            }
            let Some(values) = &raw.values else {
                return Err(invalid(format!("{field}.values"), "missing", "add `values = [\"a\", \"b\"]`"));
            };
            choice_values(field, values).map(|values| Param::Choice { values })
        }
        other => Err(invalid(format!("{field}.distribution"), format!("unknown distribution {other:?}"), valid)),
    }
}

fn choice_values(field: &str, raw: &[toml::Value]) -> Result<Vec<ParamValue>, SpecError> {
    let field = format!("{field}.values");
    if raw.is_empty() {
        return Err(invalid(
            field,
            "the list is empty",
            "list at least one value, e.g. `values = [\"adam\", \"sgd\"]`",
        ));
    }
    if raw.len() > CHOICE_VALUES_MAX {
        return Err(invalid(field, format!("{} values", raw.len()), format!("list at most {CHOICE_VALUES_MAX}")));
    }
    let mut values = Vec::with_capacity(raw.len());
    for v in raw {
        let value = match v {
            toml::Value::String(s) => ParamValue::Text(s.clone()),
            toml::Value::Integer(i) => ParamValue::Int(*i),
            toml::Value::Float(f) if f.is_finite() => ParamValue::Float(*f),
            toml::Value::Boolean(b) => ParamValue::Bool(*b),
            other => {
                return Err(invalid(
                    field,
                    format!("{other} is not a string, a finite number or a bool"),
                    "list only those",
                ))
            }
        };
        if values.contains(&value) {
            return Err(invalid(field, format!("{value} is listed twice"), "list each value once"));
        }
        values.push(value);
    }
    Ok(values)
}

fn float_bound(field: &str, key: &str, value: Option<&toml::Value>) -> Result<f64, SpecError> {
    let field = format!("{field}.{key}");
    match value {
        None => Err(invalid(field, "missing", format!("add `{key} = ...`"))),
        Some(toml::Value::Integer(i)) => Ok(*i as f64),
        Some(toml::Value::Float(f)) if f.is_finite() => Ok(*f),
        Some(other) => Err(invalid(field, format!("{other} is not a finite number"), "use a number such as 0.001")),
    }
}

fn int_value(value: &toml::Value) -> Option<i64> {
    match value {
        toml::Value::Integer(i) => Some(*i),
        // 2.0 is an integer written as a float; accept it, but never 2.5.
        toml::Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
        _ => None,
    }
}

fn int_bound(field: &str, key: &str, value: Option<&toml::Value>) -> Result<i64, SpecError> {
    let field = format!("{field}.{key}");
    match value {
        None => Err(invalid(field, "missing", format!("add `{key} = ...`"))),
        Some(v) => int_value(v).ok_or_else(|| {
            invalid(
                field,
                format!("int bounds must be integers (got {v})"),
                "use a whole number, or distribution = \"uniform\"",
            )
        }),
    }
}

/// `Debug` prints floats as written in TOML (`1e-5`, `2.0`) and integers plainly.
fn check_order<T: PartialOrd + std::fmt::Debug>(field: &str, low: T, high: T) -> Result<(), SpecError> {
    if low > high {
        return Err(invalid(
            format!("{field}.low"),
            format!("low = {low:?} is greater than high = {high:?}"),
            "swap them",
        ));
    }
    if low == high {
        return Err(invalid(
            format!("{field}.low"),
            format!("low and high are both {low:?}, so there is nothing to search"),
            "widen the range, or make it a choice with one value",
        ));
    }
    Ok(())
}

fn validate_command(raw: Option<Vec<String>>, params: &BTreeMap<String, Param>) -> Result<Vec<String>, SpecError> {
    let Some(command) = raw else {
        return Err(invalid("command", "missing", "add `command = [\"python\", \"train.py\", \"--lr\", \"{lr}\"]`"));
    };
    if command.is_empty() || command[0].trim().is_empty() {
        return Err(invalid("command", "empty", "give the program and its arguments, e.g. [\"python\", \"train.py\"]"));
    }
    if command.len() > COMMAND_ARGS_MAX {
        return Err(invalid(
            "command",
            format!("{} arguments", command.len()),
            format!("use at most {COMMAND_ARGS_MAX}"),
        ));
    }
    for (i, arg) in command.iter().enumerate() {
        let field = format!("command[{i}]");
        let pieces =
            template(arg).map_err(|problem| invalid(&field, problem, "write `{{` and `}}` for literal braces"))?;
        for piece in pieces {
            if let Piece::Param(name) = piece {
                if !params.contains_key(&name) {
                    let known: Vec<&str> = params.keys().map(String::as_str).collect();
                    return Err(invalid(
                        field,
                        format!(
                            "the placeholder {{{name}}} names no parameter (the parameters are {})",
                            known.join(", ")
                        ),
                        format!(
                            "add a [params.{name}] table, fix the name, or write {{{{{name}}}}} for literal braces"
                        ),
                    ));
                }
            }
        }
    }
    Ok(command)
}

fn validate_grid(spec: &SweepSpec) -> Result<(), SpecError> {
    for (name, param) in &spec.params {
        if param.grid_len().is_none() {
            return Err(invalid(
                format!("params.{name}.grid_points"),
                "the grid method needs a number of points for a continuous parameter",
                "add e.g. `grid_points = 5`, or use method random, tpe or gp",
            ));
        }
    }
    let size = spec.grid_size();
    if size > u64::from(spec.max_trials) {
        let factors: Vec<String> = spec.params.values().map(|p| p.grid_len().unwrap_or(0).to_string()).collect();
        let fix = if size <= u64::from(MAX_TRIALS_MAX) {
            format!("raise max_trials to {size}, or use fewer grid points")
        } else {
            format!("use fewer grid points or a larger int step: a sweep has at most {MAX_TRIALS_MAX} trials")
        };
        return Err(invalid(
            "max_trials",
            format!("the grid has {size} points ({}), more than max_trials = {}", factors.join(" x "), spec.max_trials),
            fix,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_upper_snake() {
        assert_eq!(env_name("lr"), "FERRY_PARAM_LR");
        assert_eq!(env_name("warm-up.steps"), "FERRY_PARAM_WARM_UP_STEPS");
    }

    #[test]
    fn templates_split_and_escape() {
        let render = |arg: &str| -> String {
            template(arg)
                .unwrap()
                .into_iter()
                .map(|p| match p {
                    Piece::Text(t) => t,
                    Piece::Param(n) => format!("<{n}>"),
                })
                .collect()
        };
        assert_eq!(render("--lr={lr}"), "--lr=<lr>");
        assert_eq!(render("{{x}}{a}{b}"), "{x}<a><b>");
        assert!(template("{lr").is_err());
        assert!(template("lr}").is_err());
        assert!(template("{}").is_err());
    }
}
