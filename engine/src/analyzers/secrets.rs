//! `secrets`: private keys, cloud and service access keys, tokens and passwords in configuration.
//!
//! The rules below are our own, written from the documented token formats (none is copied from
//! gitleaks or trufflehog). Each rule is gated by literal keywords (Aho-Corasick over the window)
//! and its bounded regex runs anchored at a keyword hit only; see [`super::anchored`] for how a
//! secret straddling a chunk boundary is reported exactly once. When two rules match the same
//! secret, the more specific rule (listed first) reports it.
//!
//! The secret itself never leaves the analyzer: `value` and `message` carry a redacted form (a
//! short prefix, then `****`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use streamscan_api::AnalyzerName;

use super::anchored::{Candidate, Resolver, RuleSet, RuleSpec};
use crate::{Analyzer, AnalyzerError, Finding, FindingSink, Severity, Window};

/// Longest PEM private-key body we look for an END line within; bounds the overlap (~16 KiB).
pub const PRIVATE_KEY_BODY_CAP: usize = 8192;

struct Meta {
    severity: Severity,
    what: &'static str,
}

impl Meta {
    /// Findings point at the secret itself (the value after `password =`, the key after its
    /// id), except a private key, which is the whole PEM block.
    fn whole_match(&self) -> bool {
        self.what == "private key"
    }
}

/// The rule table. Order matters: on the same secret, the earlier rule wins.
fn rules() -> Vec<(RuleSpec, Meta)> {
    // The private-key body cap is spelled in the pattern; keep it equal to PRIVATE_KEY_BODY_CAP.
    const PRIVATE_KEY: &str = concat!(
        "-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----",
        r"(?P<k>[A-Za-z0-9+/=\r\n\t :,.\-]{32,8192}?)",
        "-----END (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
    );
    vec![
        (
            RuleSpec {
                id: "private-key",
                keywords: &["-----BEGIN "],
                pattern: PRIVATE_KEY,
            },
            Meta {
                severity: Severity::Critical,
                what: "private key",
            },
        ),
        (
            RuleSpec {
                id: "aws-access-key-id",
                keywords: &["AKIA", "ASIA"],
                pattern: r"\b(?P<k>(?:AKIA|ASIA)[A-Z2-7]{16})\b",
            },
            Meta {
                severity: Severity::High,
                what: "AWS access key id",
            },
        ),
        (
            // A 40-character secret access key right after an access key id (CSV, key pairs).
            RuleSpec {
                id: "aws-secret-access-key",
                keywords: &["AKIA", "ASIA"],
                pattern: r#"\b(?:AKIA|ASIA)[A-Z2-7]{16}[\s,;:|"'=]{1,16}(?P<k>[A-Za-z0-9/+]{40})\b"#,
            },
            Meta {
                severity: Severity::Critical,
                what: "AWS secret access key",
            },
        ),
        (
            RuleSpec {
                id: "aws-secret-access-key",
                keywords: &[
                    "aws_secret_access_key",
                    "AWS_SECRET_ACCESS_KEY",
                    "aws_secret_key",
                    "AWS_SECRET_KEY",
                    // Shared with password-in-config; gates `SecretAccessKey` (JSON, YAML).
                    "secret",
                    "Secret",
                ],
                pattern: r#"(?i:aws_?secret_?(?:access_?)?key|secretaccesskey)["']?[ \t]{0,8}(?::=|=>|=|:)[ \t]{0,8}["']?(?P<k>[A-Za-z0-9/+]{40})\b"#,
            },
            Meta {
                severity: Severity::Critical,
                what: "AWS secret access key",
            },
        ),
        (
            RuleSpec {
                id: "github-token",
                keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
                pattern: r"\b(?P<k>gh[pousr]_[A-Za-z0-9]{36,251})\b",
            },
            Meta {
                severity: Severity::High,
                what: "GitHub token",
            },
        ),
        (
            RuleSpec {
                id: "github-fine-grained-token",
                keywords: &["github_pat_"],
                pattern: r"\b(?P<k>github_pat_[A-Za-z0-9_]{50,244})\b",
            },
            Meta {
                severity: Severity::High,
                what: "GitHub fine-grained personal access token",
            },
        ),
        (
            RuleSpec {
                id: "gitlab-token",
                keywords: &["glpat-"],
                pattern: r"\b(?P<k>glpat-[A-Za-z0-9_\-]{20,50})(?:[^A-Za-z0-9_\-]|$)",
            },
            Meta {
                severity: Severity::High,
                what: "GitLab personal access token",
            },
        ),
        (
            RuleSpec {
                id: "slack-token",
                keywords: &["xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"],
                pattern: r"\b(?P<k>xox[baprs]-[0-9A-Za-z]{4,16}(?:-[0-9A-Za-z]{4,64}){1,5})\b",
            },
            Meta {
                severity: Severity::High,
                what: "Slack token",
            },
        ),
        (
            RuleSpec {
                id: "slack-webhook",
                keywords: &["hooks.slack.com/"],
                pattern: r"hooks\.slack\.com/services/(?P<k>T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/[A-Za-z0-9]{20,32})\b",
            },
            Meta {
                severity: Severity::High,
                what: "Slack incoming webhook",
            },
        ),
        (
            RuleSpec {
                id: "stripe-key",
                keywords: &["sk_live_", "rk_live_"],
                pattern: r"\b(?P<k>[sr]k_live_[A-Za-z0-9]{20,247})\b",
            },
            Meta {
                severity: Severity::Critical,
                what: "Stripe live secret key",
            },
        ),
        (
            RuleSpec {
                id: "google-api-key",
                keywords: &["AIza"],
                pattern: r"\b(?P<k>AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|$)",
            },
            Meta {
                severity: Severity::High,
                what: "Google API key",
            },
        ),
        (
            RuleSpec {
                id: "npm-token",
                keywords: &["npm_"],
                pattern: r"\b(?P<k>npm_[A-Za-z0-9]{36})\b",
            },
            Meta {
                severity: Severity::High,
                what: "npm access token",
            },
        ),
        (
            RuleSpec {
                id: "azure-storage-key",
                keywords: &["AccountKey="],
                pattern: r"AccountKey=(?P<k>[A-Za-z0-9+/]{86}==)",
            },
            Meta {
                severity: Severity::Critical,
                what: "Azure storage account key",
            },
        ),
        (
            RuleSpec {
                id: "jwt",
                keywords: &["eyJ"],
                pattern: r"\b(?P<k>eyJ[A-Za-z0-9_\-]{8,1024}\.eyJ[A-Za-z0-9_\-]{8,4096}\.[A-Za-z0-9_\-]{16,1024})(?:[^A-Za-z0-9_\-.]|$)",
            },
            Meta {
                severity: Severity::Medium,
                what: "JSON Web Token",
            },
        ),
        (
            RuleSpec {
                id: "password-in-config",
                keywords: &[
                    "password",
                    "Password",
                    "PASSWORD",
                    "passwd",
                    "Passwd",
                    "PASSWD",
                    "secret",
                    "Secret",
                    "SECRET",
                    "api_key",
                    "Api_key",
                    "API_KEY",
                    "apikey",
                    "ApiKey",
                    "APIKEY",
                    "api-key",
                    "Api-Key",
                    "API-KEY",
                    "access_token",
                    "AccessToken",
                    "ACCESS_TOKEN",
                    "auth_token",
                    "AuthToken",
                    "AUTH_TOKEN",
                ],
                pattern: r#"(?i:password|passwd|secret|api[_-]?key|access_?token|auth_?token)[A-Za-z0-9_]{0,16}["']?[ \t]{0,8}(?::=|=>|=|:)[ \t]{0,8}["']?(?P<k>[!#&*+\-./0-9=?@A-Z^_a-z|~]{6,128})(?:[^!#&*+\-./0-9=?@A-Z^_a-z|~]|$)"#,
            },
            Meta {
                severity: Severity::Medium,
                what: "password or secret in configuration",
            },
        ),
    ]
}

/// Values that follow `password =` in documentation and code rather than being a password.
fn plausible_password(value: &[u8]) -> bool {
    const PLACEHOLDERS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "changeme",
        "example",
        "required",
        "optional",
        "undefined",
        "none",
        "null",
        "true",
        "false",
        "xxxxxx",
        "string",
        "your_password",
        "yourpassword",
        "dummy",
    ];
    let Some(&first) = value.first() else {
        return false;
    };
    if value.iter().all(|&b| b == first) || value.windows(3).any(|w| w == b"***") {
        return false;
    }
    let lower = value.to_ascii_lowercase();
    !PLACEHOLDERS.iter().any(|p| lower == p.as_bytes())
}

/// The secret shown to people: at most 4 leading characters (fewer for short secrets), then `****`.
pub fn redact(secret: &[u8]) -> String {
    let keep = (secret.len() / 4).min(4);
    let prefix: String = secret[..keep]
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect();
    format!("{prefix}****")
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    resolved: u64,
    by_rule: BTreeMap<String, u64>,
}

pub struct SecretsAnalyzer {
    rules: RuleSet,
    meta: Vec<(&'static str, Meta)>,
    resolver: Resolver,
    by_rule: BTreeMap<String, u64>,
    candidates: Vec<Candidate>,
    accepted: Vec<Candidate>,
}

impl SecretsAnalyzer {
    pub fn new() -> Self {
        let (specs, meta): (Vec<RuleSpec>, Vec<Meta>) = rules().into_iter().unzip();
        let ids = specs.iter().map(|s| s.id);
        let meta = ids.zip(meta).collect();
        // The table is static and covered by tests, so a failure here is a programming error.
        #[allow(clippy::expect_used)]
        let rules = RuleSet::new(&specs).expect("built-in secret rules compile");
        SecretsAnalyzer {
            rules,
            meta,
            resolver: Resolver::default(),
            by_rule: BTreeMap::new(),
            candidates: Vec::new(),
            accepted: Vec::new(),
        }
    }
}

impl Default for SecretsAnalyzer {
    fn default() -> Self {
        Self::new()
    }
}

impl Analyzer for SecretsAnalyzer {
    fn name(&self) -> AnalyzerName {
        AnalyzerName::Secrets
    }

    fn overlap(&self) -> usize {
        self.rules.overlap()
    }

    fn update(&mut self, window: &Window<'_>, sink: &mut dyn FindingSink) -> Result<(), AnalyzerError> {
        let len = self.rules.max_len();
        let view = self.resolver.view(window, self.rules.overlap(), len, len + 1);
        self.candidates.clear();
        self.accepted.clear();
        self.rules.candidates(view.hay, view.from, &mut self.candidates);
        let meta = &self.meta;
        // Drop placeholder passwords before resolution so they cannot hide a real match.
        self.candidates.retain(|c| {
            meta[c.rule].0 != "password-in-config" || plausible_password(&view.hay[c.key_start..c.key_end])
        });
        self.resolver.accept(&view, &mut self.candidates, &mut self.accepted);
        for c in &self.accepted {
            let (id, m) = &self.meta[c.rule];
            let (start, end) = if m.whole_match() {
                (c.start, c.end)
            } else {
                (c.key_start, c.key_end)
            };
            let offset = view.offset + start as u64;
            let shown = redact(&view.hay[c.key_start..c.key_end]);
            let mut f = Finding::new(
                AnalyzerName::Secrets,
                *id,
                m.severity,
                offset,
                format!("{} at offset {offset}: {shown}", m.what),
            );
            f.length = Some((end - start) as u64);
            f.value = Some(shown);
            *self.by_rule.entry((*id).to_string()).or_default() += 1;
            sink.push(f);
        }
        Ok(())
    }

    fn finish(&mut self, _sink: &mut dyn FindingSink) -> Result<serde_json::Value, AnalyzerError> {
        let total: u64 = self.by_rule.values().sum();
        Ok(serde_json::json!({ "findings": total, "byRule": self.by_rule }))
    }

    fn checkpoint(&self) -> Result<serde_json::Value, AnalyzerError> {
        serde_json::to_value(State {
            resolved: self.resolver.resolved,
            by_rule: self.by_rule.clone(),
        })
        .map_err(|e| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Secrets,
            message: e.to_string(),
        })
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<(), AnalyzerError> {
        let state: State = serde_json::from_value(state).map_err(|e| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Secrets,
            message: e.to_string(),
        })?;
        self.resolver.resolved = state.resolved;
        self.by_rule = state.by_rule;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
