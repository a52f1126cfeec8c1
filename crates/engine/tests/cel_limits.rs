//! A trigger file whose CEL is over the limits (see "Limits" in docs/triggers.md): refused when it
//! is checked, with the trigger and the line of the key, and never installed (nor a crash) when
//! it comes back from the log, where each partition writer compiles it again at start.

#![allow(clippy::unwrap_used)]

use storeline_engine::testkit::Registry;
use storeline_engine::testkit::triggers::Definition;
use storeline_engine::triggers::Problem;
use storeline_engine::triggers::TriggerSet;

const GOOD: &str = r#"
[[trigger]]
name = "nudge"
on = "cart.item_added"
then = [ { emit = "cart.nudged" } ]
"#;

/// A file with expressions 20,000 deep in a `when`, a `cancel_on` match and an aggregate key.
fn hostile() -> String {
    let deep = format!("{}true{}", "(".repeat(20_000), ")".repeat(20_000));
    format!(
        r#"
[[aggregate]]
name = "adds"
on = "cart.item_added"
key = "{}1{}"
window = "1h"

[[trigger]]
name = "fine"
on = "cart.item_added"
then = [ {{ emit = "x.y" }} ]

[[trigger]]
name = "abandoned-cart"
on = "cart.item_added"
when = "{deep}"
cancel_on = [ {{ event = "order.placed", match = "{}" }} ]
then = [ {{ emit = "cart.nudged" }} ]
"#,
        "[".repeat(20_000),
        "]".repeat(20_000),
        "event.data.lines.exists(l, l.skus.exists(s, s == 'x'))",
    )
}

/// Runs `f` on a thread with tokio's default worker stack: an overflow would abort the test.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn a_file_over_the_cel_limits_is_refused_naming_the_trigger_and_the_line() {
    let problems: Vec<Problem> = on_small_stack(|| TriggerSet::parse(&hostile()).unwrap_err());
    let at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
    assert_eq!(
        at,
        [
            "aggregate[0] \"adds\".key (line 5)",
            "trigger[1] \"abandoned-cart\".when (line 16)",
            "trigger[1] \"abandoned-cart\".cancel_on[0].match (line 17)",
        ]
    );
    for p in &problems[..2] {
        assert!(
            p.message.starts_with("CEL is over its limits: it is 400"),
            "{p}"
        );
        assert!(
            p.message
                .contains("nest 20000 deep from character 33 (at most 32)"),
            "{p}"
        );
    }
    assert!(
        problems[2]
            .message
            .contains("the comprehension `exists(` at character 41 is inside another"),
        "{}",
        problems[2]
    );
}

#[test]
fn a_stored_file_over_the_limits_is_not_installed_and_the_previous_versions_stay() {
    let good = TriggerSet::parse(GOOD).unwrap();
    let rows = vec![
        (
            format!("set:{}", good.version),
            Definition {
                version: good.version.clone(),
                source: GOOD.into(),
            },
        ),
        (
            "current".to_owned(),
            Definition {
                version: "forged".into(),
                source: hostile(),
            },
        ),
    ];
    let reg = on_small_stack(move || Registry::from_rows(rows));
    assert!(
        reg.current().triggers.is_empty(),
        "the hostile file is not current"
    );
    let nudge = &good.triggers[0];
    assert!(reg.version("nudge", &nudge.version).is_some());
}
