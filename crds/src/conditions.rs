//! `metav1.Condition` helpers: set a condition without disturbing `lastTransitionTime` when its
//! status did not change, and read conditions by type.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The status of a condition, as the strings Kubernetes uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(value: bool) -> Self {
        if value { Status::True } else { Status::False }
    }
}

/// What a writer wants a condition to say; [`set_condition`] decides the transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    pub type_: &'a str,
    pub status: Status,
    pub reason: &'a str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// Sets a condition in `conditions`, replacing the one of the same type.
///
/// `lastTransitionTime` becomes `now` only when the status changes (or the condition is new);
/// reason, message and observedGeneration are always updated. Returns whether anything changed,
/// so callers can skip a status write that would change nothing.
pub fn set_condition(conditions: &mut Vec<Condition>, desired: Desired<'_>, now: Time) -> bool {
    let status = desired.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(existing) => {
            let mut changed = false;
            if existing.status != status {
                existing.status = status.to_owned();
                existing.last_transition_time = now;
                changed = true;
            }
            if existing.reason != desired.reason {
                existing.reason = desired.reason.to_owned();
                changed = true;
            }
            if existing.message != desired.message {
                existing.message = desired.message;
                changed = true;
            }
            if existing.observed_generation != desired.observed_generation {
                existing.observed_generation = desired.observed_generation;
                changed = true;
            }
            changed
        }
        None => {
            conditions.push(Condition {
                type_: desired.type_.to_owned(),
                status: status.to_owned(),
                reason: desired.reason.to_owned(),
                message: desired.message,
                observed_generation: desired.observed_generation,
                last_transition_time: now,
            });
            true
        }
    }
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present with status `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == Status::True.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn desired(status: Status, reason: &str, message: &str) -> Desired<'static> {
        Desired {
            type_: "Scheduled",
            status,
            reason: Box::leak(reason.to_owned().into_boxed_str()),
            message: message.to_owned(),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn new_condition_gets_now_as_transition_time() {
        let mut conds = Vec::new();
        assert!(set_condition(
            &mut conds,
            desired(Status::False, "NoServerAvailable", "waiting"),
            at(10)
        ));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].status, "False");
    }

    #[test]
    fn same_status_keeps_transition_time_but_updates_message() {
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            desired(Status::False, "NoServerAvailable", "0 of 3 free"),
            at(10),
        );
        assert!(set_condition(
            &mut conds,
            desired(Status::False, "NoServerAvailable", "1 of 3 busy"),
            at(20)
        ));
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].message, "1 of 3 busy");
    }

    #[test]
    fn identical_condition_reports_no_change() {
        let mut conds = Vec::new();
        set_condition(&mut conds, desired(Status::True, "Placed", "on 1"), at(10));
        assert!(!set_condition(
            &mut conds,
            desired(Status::True, "Placed", "on 1"),
            at(30)
        ));
        assert_eq!(conds[0].last_transition_time, at(10));
    }

    #[test]
    fn status_change_moves_transition_time() {
        let mut conds = Vec::new();
        set_condition(&mut conds, desired(Status::False, "NoServerAvailable", ""), at(10));
        set_condition(&mut conds, desired(Status::True, "Placed", "on 2"), at(40));
        assert_eq!(conds[0].last_transition_time, at(40));
        assert!(is_condition_true(&conds, "Scheduled"));
        assert!(!is_condition_true(&conds, "Running"));
        assert!(find_condition(&conds, "Running").is_none());
    }
}
