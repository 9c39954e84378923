use super::*;
use crate::analyzers::testutil::{Rng, assert_nothing_in_random_data, plant, run, run_resumed, straddle};

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn pick(rng: &mut Rng, set: &[u8], n: usize) -> String {
    (0..n)
        .map(|_| set[rng.below(set.len() as u64) as usize] as char)
        .collect()
}

/// One planted item: the bytes written, where the finding starts within them, the rule, and
/// the raw secret that must never be printed.
struct Item {
    bytes: Vec<u8>,
    at: usize,
    rule: &'static str,
    secret: String,
}

fn item(text: String, prefix_len: usize, rule: &'static str, secret: String) -> Item {
    // Newlines around the item give it word boundaries whatever the random neighbours are.
    let mut bytes = b"\n".to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    Item {
        bytes,
        at: 1 + prefix_len,
        rule,
        secret,
    }
}

fn items(rng: &mut Rng, with_pem: bool) -> Vec<Item> {
    let mut v = Vec::new();
    let id = format!("AKIA{}", pick(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16));
    v.push(item(id.clone(), 0, "aws-access-key-id", id));
    let secret = pick(rng, B64, 40);
    let text = format!("aws_secret_access_key = {secret}");
    v.push(item(text, 24, "aws-secret-access-key", secret));
    let t = format!("ghp_{}", pick(rng, ALNUM, 36));
    v.push(item(t.clone(), 0, "github-token", t));
    let t = format!("github_pat_{}_{}", pick(rng, ALNUM, 22), pick(rng, ALNUM, 59));
    v.push(item(t.clone(), 0, "github-fine-grained-token", t));
    let t = format!(
        "xoxb-{}-{}-{}",
        pick(rng, b"0123456789", 12),
        pick(rng, b"0123456789", 13),
        pick(rng, ALNUM, 24)
    );
    v.push(item(t.clone(), 0, "slack-token", t));
    let t = format!("sk_live_{}", pick(rng, ALNUM, 24));
    v.push(item(t.clone(), 0, "stripe-key", t));
    let t = format!("AIza{}", pick(rng, ALNUM, 35));
    v.push(item(t.clone(), 0, "google-api-key", t));
    let t = format!("glpat-{}", pick(rng, ALNUM, 20));
    v.push(item(t.clone(), 0, "gitlab-token", t));
    let t = format!(
        "eyJ{}.eyJ{}.{}",
        pick(rng, ALNUM, 30),
        pick(rng, ALNUM, 60),
        pick(rng, ALNUM, 43)
    );
    v.push(item(t.clone(), 0, "jwt", t));
    let pw = format!("Pw{}!", pick(rng, ALNUM, 12));
    v.push(item(format!("db_password = \"{pw}\""), 15, "password-in-config", pw));
    let pw = pick(rng, ALNUM, 16);
    v.push(item(format!("API_KEY: {pw}"), 9, "password-in-config", pw));
    if with_pem {
        let body: Vec<String> = (0..25).map(|_| pick(rng, B64, 64)).collect();
        let body = body.join("\n");
        let text = format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----");
        v.push(item(text, 0, "private-key", body));
    }
    v
}

/// Random bytes with the items planted across chunk boundaries; returns the data and the expected
/// (offset, rule) pairs.
fn planted(seed: u64, len: usize, chunk: usize, with_pem: bool) -> (Vec<u8>, Vec<(u64, String)>, Vec<String>) {
    let mut rng = Rng::new(seed);
    let mut data = rng.bytes(len);
    let items = items(&mut rng, with_pem);
    let spacing = len / (items.len() + 1);
    let mut expected = Vec::new();
    let mut secrets = Vec::new();
    let mut last_end = 0;
    for (i, it) in items.iter().enumerate() {
        let base = (i + 1) * spacing;
        // Straddle a chunk boundary when chunks are coarser than items, shifted a little per item.
        let boundary = straddle(base, spacing, chunk);
        let at = boundary.saturating_sub(it.bytes.len() / 2 + i).max(1);
        assert!(at >= last_end && at + it.bytes.len() < len, "items overlap");
        last_end = at + it.bytes.len();
        plant(&mut data, at, &it.bytes);
        expected.push(((at + it.at) as u64, it.rule.to_string()));
        secrets.push(it.secret.clone());
    }
    expected.sort();
    (data, expected, secrets)
}

fn got(findings: &[Finding]) -> Vec<(u64, String)> {
    let mut v: Vec<_> = findings.iter().map(|f| (f.offset, f.rule.clone())).collect();
    v.sort();
    v
}

#[test]
fn rule_table_compiles_with_a_bounded_overlap() {
    let a = SecretsAnalyzer::new();
    assert!(a.overlap() > 2 * PRIVATE_KEY_BODY_CAP, "{}", a.overlap());
    assert!(a.overlap() < 2 * PRIVATE_KEY_BODY_CAP + 1024, "{}", a.overlap());
}

#[test]
fn planted_secrets_found_once_at_their_offsets_across_chunk_sizes() {
    // Tiny chunks on small inputs (every byte is a boundary), larger chunks on larger inputs.
    let cases: &[(usize, usize, bool)] = &[
        (1, 6 * 1024, false),
        (7, 12 * 1024, false),
        (100, 96 * 1024, true),
        (4093, 512 * 1024, true),
        (65536, 2 << 20, true),
        (1 << 20, 3 << 20, true),
    ];
    for &(chunk, len, pem) in cases {
        let (data, expected, _) = planted(chunk as u64, len, chunk, pem);
        let mut a = SecretsAnalyzer::new();
        let carry = a.overlap();
        let (findings, summary) = run(&mut a, &data, chunk, carry);
        assert_eq!(got(&findings), expected, "chunk {chunk}");
        assert_eq!(summary["findings"], expected.len() as u64);
        // A larger carried tail (another analyzer needs more) changes nothing.
        let mut a = SecretsAnalyzer::new();
        let (more, _) = run(&mut a, &data, chunk, carry + 3000);
        assert_eq!(got(&more), expected, "chunk {chunk}, larger carry");
    }
}

#[test]
fn secrets_are_redacted_in_every_output() {
    let (data, expected, secrets) = planted(99, 256 * 1024, 4096, true);
    let mut a = SecretsAnalyzer::new();
    let carry = a.overlap();
    let (findings, summary) = run(&mut a, &data, 4096, carry);
    assert_eq!(findings.len(), expected.len());
    let json = serde_json::to_string(&findings).unwrap() + &summary.to_string();
    for s in &secrets {
        assert!(!json.contains(s.as_str()), "raw secret {s} in output");
        // Not even a long fragment of it.
        assert!(!json.contains(&s[..12]), "12-byte fragment of {s} in output");
    }
    for f in &findings {
        let v = f.value.as_deref().unwrap();
        assert!(v.ends_with("****") && v.len() <= 8, "{v}");
        assert!(f.message.contains(v));
    }
}

#[test]
fn clean_random_data_has_no_secrets() {
    assert_nothing_in_random_data(&mut SecretsAnalyzer::new(), 7);
}

#[test]
fn checkpoint_and_restore_give_the_same_findings() {
    let chunk = 4096;
    let (data, expected, _) = planted(5, 512 * 1024, chunk, true);
    let mut a = SecretsAnalyzer::new();
    let carry = a.overlap();
    let (whole, whole_summary) = run(&mut a, &data, chunk, carry);
    assert_eq!(got(&whole), expected);
    for cut in [1, 17, 50, 64, 100, 127] {
        let (mut first, mut second) = (SecretsAnalyzer::new(), SecretsAnalyzer::new());
        let (resumed, summary) = run_resumed(&mut first, &mut second, &data, chunk, carry, cut);
        assert_eq!(resumed, whole, "cut after {cut} windows");
        assert_eq!(summary, whole_summary);
    }
}

fn scan(text: &[u8]) -> Vec<Finding> {
    let mut a = SecretsAnalyzer::new();
    let carry = a.overlap();
    run(&mut a, text, 1 << 20, carry).0
}

#[test]
fn near_misses_are_not_secrets() {
    for text in [
        &b"password=%s\n"[..],
        b"password: ********\n",
        b"password = changeme\n",
        b"passwd: files\n",
        b"XAKIAABCDEFGHIJKLMNOP\n",  // no word boundary before the id
        b"AKIAABCDEFGHIJKLMNOPQ7\n", // too long
        b"ghp_short\n",
        b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n", // no END within the cap
        b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n",
    ] {
        assert!(scan(text).is_empty(), "{}", String::from_utf8_lossy(text));
    }
}

#[test]
fn one_secret_matched_by_two_rules_is_reported_once_by_the_specific_rule() {
    let token = "ghp_aaaaBBBBccccDDDDeeeeFFFFgggg0123456789";
    let text = format!("password = {token}\n");
    let f = scan(text.as_bytes());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].rule, "github-token");
    assert_eq!(f[0].offset, 11);
    // The id and the secret of a key pair are two findings.
    let id = "AKIAABCDEFGHIJKLMNOP";
    let secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY00";
    let f = scan(format!("{id},{secret}\n").as_bytes());
    let rules: Vec<_> = f.iter().map(|f| f.rule.as_str()).collect();
    assert_eq!(rules, ["aws-access-key-id", "aws-secret-access-key"]);
}

#[test]
fn redaction_keeps_a_short_prefix_only() {
    assert_eq!(redact(b"AKIAABCDEFGHIJKLMNOP"), "AKIA****");
    assert_eq!(redact(b"hunter2x"), "hu****");
    assert_eq!(redact(b"abc"), "****");
}
