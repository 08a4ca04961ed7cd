//! What the providers' tests share.

/// What a listing says, one line per machine in node order, without ids and times (which the provider makes up).
pub fn summary(instances: &[ferry_cloud::Instance]) -> Vec<String> {
    let mut lines: Vec<String> = instances
        .iter()
        .map(|i| {
            format!(
                "{} {} {} {} {} pool={}",
                i.node().unwrap_or("?"),
                i.state,
                i.market,
                i.instance_type,
                i.zone,
                i.pool().unwrap_or("?")
            )
        })
        .collect();
    lines.sort();
    lines
}
