use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn utcs(list: &[&str]) -> Vec<DateTime<Utc>> {
    list.iter().map(|s| utc(s)).collect()
}

fn schedule(expr: &str, zone: &str) -> CronSchedule {
    CronSchedule::parse(expr, zone).unwrap_or_else(|e| panic!("{expr} in {zone}: {e}"))
}

#[test]
fn five_and_six_fields() {
    let every_quarter = schedule("*/15 * * * *", "UTC");
    assert_eq!(
        every_quarter.upcoming(utc("2026-05-01T10:07:30Z"), 3),
        utcs(&[
            "2026-05-01T10:15:00Z",
            "2026-05-01T10:30:00Z",
            "2026-05-01T10:45:00Z"
        ])
    );
    let every_ten_seconds = schedule("*/10 * * * * *", "UTC");
    assert_eq!(
        every_ten_seconds.upcoming(utc("2026-05-01T10:07:30.250Z"), 3),
        utcs(&[
            "2026-05-01T10:07:40Z",
            "2026-05-01T10:07:50Z",
            "2026-05-01T10:08:00Z"
        ])
    );
    // Names and nicknames.
    let weekdays = schedule("0 9 * * MON-FRI", "UTC");
    assert_eq!(
        weekdays.next_after(utc("2026-05-01T09:00:00Z")), // a Friday
        Some(utc("2026-05-04T09:00:00Z"))
    );
    let hourly = schedule("@hourly", "UTC");
    assert_eq!(
        hourly.next_after(utc("2026-05-01T09:00:00Z")),
        Some(utc("2026-05-01T10:00:00Z"))
    );
}

#[test]
fn next_after_is_strict_and_latest_is_inclusive() {
    let s = schedule("* * * * * *", "UTC");
    let t = utc("2026-05-01T10:00:00Z");
    assert_eq!(s.next_after(t), Some(utc("2026-05-01T10:00:01Z")));
    assert_eq!(s.latest_at_or_before(t), Some(t));
    assert_eq!(
        s.latest_at_or_before(utc("2026-05-01T10:00:00.900Z")),
        Some(t)
    );
}

#[test]
fn errors_name_what_is_wrong() {
    let expr_err = |expr: &str| match CronSchedule::parse(expr, "UTC") {
        Err(ScheduleError::Expression { reason, .. }) => reason,
        other => panic!("{expr}: {other:?}"),
    };
    assert!(expr_err("* * * *").contains("it has 4 fields"));
    assert!(expr_err("* * * * * * *").contains("it has 7 fields"));
    assert!(expr_err("").contains("it has 0 fields"));
    assert!(
        expr_err("61 * * * *").starts_with("the minute field \"61\" is not valid"),
        "{}",
        expr_err("61 * * * *")
    );
    assert!(expr_err("* * * * FOO").starts_with("the day-of-week field \"FOO\" is not valid"));
    assert!(expr_err("0 25 * * *").starts_with("the hour field \"25\""));
    assert!(expr_err("*/0 * * * * *").starts_with("the second field \"*/0\""));
    assert!(expr_err("* * * 13 *").starts_with("the month field \"13\""));
    assert!(expr_err(&"* ".repeat(150)).contains("longer than"));

    let e = CronSchedule::parse("0 0 30 2 *", "UTC").unwrap_err();
    assert_eq!(
        e,
        ScheduleError::NeverFires {
            expr: "0 0 30 2 *".into()
        }
    );
    assert_eq!(e.to_string(), "cron expression \"0 0 30 2 *\" never fires");

    let e = CronSchedule::parse("* * * * *", "Mars/Olympus_Mons").unwrap_err();
    assert!(matches!(e, ScheduleError::TimeZone { ref zone } if zone == "Mars/Olympus_Mons"));
    assert!(
        e.to_string()
            .contains("invalid time zone \"Mars/Olympus_Mons\"")
    );
    // A bad expression is reported before a bad zone.
    assert!(matches!(
        CronSchedule::parse("nope", "nowhere"),
        Err(ScheduleError::Expression { .. })
    ));
}

#[test]
fn wall_clock_time_in_the_zone() {
    let nine = schedule("0 9 * * *", "Europe/Berlin");
    // Winter: UTC+1; summer: UTC+2.
    assert_eq!(
        nine.next_after(utc("2026-01-15T00:00:00Z")),
        Some(utc("2026-01-15T08:00:00Z"))
    );
    assert_eq!(
        nine.next_after(utc("2026-07-15T00:00:00Z")),
        Some(utc("2026-07-15T07:00:00Z"))
    );
    let tokyo = schedule("0 0 1 * *", "Asia/Tokyo");
    assert_eq!(
        tokyo.next_after(utc("2026-05-01T00:00:00Z")),
        Some(utc("2026-05-31T15:00:00Z"))
    );
}

// Europe/Berlin 2026: 29 March 02:00 CET → 03:00 CEST (01:00 UTC);
// 25 October 03:00 CEST → 02:00 CET (01:00 UTC).

#[test]
fn berlin_spring_forward_fixed_time_fires_once_after_the_gap() {
    let s = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        s.upcoming(utc("2026-03-28T00:00:00Z"), 3),
        utcs(&[
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST
            "2026-03-30T00:30:00Z", // 02:30 CEST
        ])
    );
}

#[test]
fn berlin_spring_forward_interval_skips_the_gap() {
    let half_hourly = schedule("*/30 * * * *", "Europe/Berlin");
    assert_eq!(
        half_hourly.upcoming(utc("2026-03-29T00:15:00Z"), 3),
        utcs(&[
            "2026-03-29T00:30:00Z", // 01:30 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST, right after the gap
            "2026-03-29T01:30:00Z", // 03:30 CEST
        ])
    );
    let hourly = schedule("0 * * * *", "Europe/Berlin");
    assert_eq!(
        hourly.upcoming(utc("2026-03-28T23:30:00Z"), 3),
        utcs(&[
            "2026-03-29T00:00:00Z", // 01:00 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST: one real hour later
            "2026-03-29T02:00:00Z",
        ])
    );
}

#[test]
fn berlin_fall_back_fixed_time_fires_once_in_the_first_pass() {
    let s = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        s.upcoming(utc("2026-10-24T12:00:00Z"), 2),
        utcs(&[
            "2026-10-25T00:30:00Z", // 02:30 CEST; 02:30 CET (01:30 UTC) does not fire
            "2026-10-26T01:30:00Z", // 02:30 CET
        ])
    );
    // Searching from inside the repeated hour does not fire it again.
    assert_eq!(
        s.next_after(utc("2026-10-25T00:45:00Z")),
        Some(utc("2026-10-26T01:30:00Z"))
    );
}

#[test]
fn berlin_fall_back_interval_fires_in_both_passes() {
    let hourly = schedule("0 * * * *", "Europe/Berlin");
    assert_eq!(
        hourly.upcoming(utc("2026-10-24T23:30:00Z"), 4),
        utcs(&[
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T01:00:00Z", // 02:00 CET, the repeated hour
            "2026-10-25T02:00:00Z", // 03:00 CET
            "2026-10-25T03:00:00Z",
        ])
    );
    let quarter = schedule("*/15 * * * *", "Europe/Berlin");
    let runs = quarter.upcoming(utc("2026-10-24T23:50:00Z"), 9);
    // Every real quarter hour through both passes: no gap, no repeat.
    assert_eq!(runs[0], utc("2026-10-25T00:00:00Z"));
    for pair in runs.windows(2) {
        assert_eq!(pair[1] - pair[0], TimeDelta::minutes(15), "{runs:?}");
    }
}

// America/New_York 2026: 8 March 02:00 EST → 03:00 EDT (07:00 UTC);
// 1 November 02:00 EDT → 01:00 EST (06:00 UTC).

#[test]
fn new_york_spring_forward_and_fall_back() {
    let s = schedule("30 2 * * *", "America/New_York");
    assert_eq!(
        s.upcoming(utc("2026-03-07T12:00:00Z"), 3),
        utcs(&[
            "2026-03-08T07:00:00Z", // 02:30 EST does not exist: 03:00 EDT
            "2026-03-09T06:30:00Z", // 02:30 EDT
            "2026-03-10T06:30:00Z",
        ])
    );
    let s = schedule("30 1 * * *", "America/New_York");
    assert_eq!(
        s.upcoming(utc("2026-10-31T12:00:00Z"), 2),
        utcs(&[
            "2026-11-01T05:30:00Z", // 01:30 EDT; 01:30 EST (06:30 UTC) does not fire
            "2026-11-02T06:30:00Z", // 01:30 EST
        ])
    );
    let every_20 = schedule("*/20 * * * *", "America/New_York");
    assert_eq!(
        every_20.upcoming(utc("2026-11-01T05:30:00Z"), 6),
        utcs(&[
            "2026-11-01T05:40:00Z", // 01:40 EDT
            "2026-11-01T06:00:00Z", // 01:00 EST, the repeated hour
            "2026-11-01T06:20:00Z",
            "2026-11-01T06:40:00Z",
            "2026-11-01T07:00:00Z", // 02:00 EST
            "2026-11-01T07:20:00Z",
        ])
    );
}

#[test]
fn latest_at_or_before_agrees_with_forward_search_across_dst() {
    // The catch-up instant must be one the schedule really has.
    for (expr, zone, from) in [
        ("30 2 * * *", "Europe/Berlin", "2026-10-20T00:00:00Z"),
        ("30 2 * * *", "Europe/Berlin", "2026-03-25T00:00:00Z"),
        ("0 * * * *", "Europe/Berlin", "2026-10-24T20:00:00Z"),
        ("30 1 * * *", "America/New_York", "2026-10-28T00:00:00Z"),
        ("*/20 * * * *", "America/New_York", "2026-11-01T04:00:00Z"),
    ] {
        let s = schedule(expr, zone);
        let runs = s.upcoming(utc(from), 12);
        for pair in runs.windows(2) {
            // Anywhere between two instants, the latest is the first one.
            let between = pair[0] + (pair[1] - pair[0]) / 2;
            assert_eq!(
                s.latest_at_or_before(between),
                Some(pair[0]),
                "{expr} in {zone} at {between}"
            );
            assert_eq!(s.latest_at_or_before(pair[1]), Some(pair[1]));
        }
    }
}

#[test]
fn plan_fires_a_single_due_instant_however_late() {
    let hourly = schedule("0 * * * *", "UTC");
    let pending = utc("2026-05-01T10:00:00Z");
    let plan = hourly.plan(pending, utc("2026-05-01T10:59:00Z"), CatchUp::Skip, false);
    assert_eq!(
        plan,
        Plan {
            fire: Some(pending),
            next: Some(utc("2026-05-01T11:00:00Z")),
            reason: PlanReason::Due,
        }
    );
    let plan = hourly.plan(pending, pending, CatchUp::Skip, false);
    assert_eq!(plan.fire, Some(pending));
    let early = hourly.plan(
        pending,
        pending - TimeDelta::milliseconds(1),
        CatchUp::Skip,
        false,
    );
    assert_eq!(
        early,
        Plan {
            fire: None,
            next: Some(pending),
            reason: PlanReason::NotDue
        }
    );
}

#[test]
fn plan_in_order_when_merely_behind() {
    let every_second = schedule("* * * * * *", "UTC");
    let pending = utc("2026-05-01T10:00:00Z");
    let now = pending + TimeDelta::milliseconds(3_400);
    for catch_up in [CatchUp::FireOnce, CatchUp::Skip] {
        assert_eq!(
            every_second.plan(pending, now, catch_up, false),
            Plan {
                fire: Some(pending),
                next: Some(pending + TimeDelta::seconds(1)),
                reason: PlanReason::Behind,
            }
        );
    }
    // Repeated plans walk every instant up to now, then stop.
    let mut fired = Vec::new();
    let mut next = Some(pending);
    while let Some(p) = next.filter(|&p| p <= now) {
        let plan = every_second.plan(p, now, CatchUp::Skip, false);
        fired.extend(plan.fire);
        next = plan.next;
    }
    assert_eq!(fired.len(), 4);
    assert_eq!(next, Some(pending + TimeDelta::seconds(4)));
}

#[test]
fn plan_catch_up_after_every_scheduler_was_down() {
    let every_minute = schedule("* * * * *", "UTC");
    let pending = utc("2026-05-01T10:00:00Z");
    let now = utc("2026-05-01T13:27:30Z");
    assert_eq!(
        every_minute.plan(pending, now, CatchUp::FireOnce, false),
        Plan {
            fire: Some(utc("2026-05-01T13:27:00Z")),
            next: Some(utc("2026-05-01T13:28:00Z")),
            reason: PlanReason::CaughtUp,
        }
    );
    assert_eq!(
        every_minute.plan(pending, now, CatchUp::Skip, false),
        Plan {
            fire: None,
            next: Some(utc("2026-05-01T13:28:00Z")),
            reason: PlanReason::MissedSkipped,
        }
    );
    // Down across a fall-back night: the catch-up fires the schedule's
    // own latest instant (02:30 CEST, the only 02:30 it has that night).
    let berlin = schedule("30 2 * * *", "Europe/Berlin");
    let plan = berlin.plan(
        utc("2026-10-23T00:30:00Z"),
        utc("2026-10-25T01:45:00Z"),
        CatchUp::FireOnce,
        false,
    );
    assert_eq!(plan.fire, Some(utc("2026-10-25T00:30:00Z")));
    assert_eq!(plan.next, Some(utc("2026-10-26T01:30:00Z")));
}

#[test]
fn plan_passes_over_instants_while_the_previous_firing_runs() {
    let every_second = schedule("* * * * * *", "UTC");
    let pending = utc("2026-05-01T10:00:00Z");
    let now = pending + TimeDelta::milliseconds(2_500);
    assert_eq!(
        every_second.plan(pending, now, CatchUp::FireOnce, true),
        Plan {
            fire: None,
            next: Some(pending + TimeDelta::seconds(3)),
            reason: PlanReason::Overlapping,
        }
    );
}

#[test]
fn policies_round_trip_as_text() {
    for c in [CatchUp::FireOnce, CatchUp::Skip] {
        assert_eq!(CatchUp::parse(c.as_str()), Some(c));
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::json!(c.as_str())
        );
    }
    for o in [Overlap::Allow, Overlap::Skip] {
        assert_eq!(Overlap::parse(o.as_str()), Some(o));
    }
    assert_eq!(CatchUp::default(), CatchUp::FireOnce);
    assert_eq!(Overlap::default(), Overlap::Allow);
    assert_eq!(CatchUp::parse("burst"), None);
    assert_eq!(parse_zone("UTC").unwrap(), chrono_tz::UTC);
}
