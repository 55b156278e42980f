//! ListOps (Nangia & Bowman 2018) as the Long Range Arena generates it
//! (`lra_benchmarks/data/listops.py`), and its tokenizer (LRA's input pipeline).
//!
//! A tree is a value 0–9, or an operator (`[MIN`, `[MAX`, `[MED` = integer part of the
//! median, `[SM` = sum mod 10) over 2 to `max_args` subtrees, closed by `]`. Generation starts
//! at depth 1; a node is an operator with probability 0.25 while the depth is below
//! `max_depth`, else a value. A tree's length counts operators, values and closing brackets;
//! only trees with `min_length < length < max_length` are kept, each tree once, and the first
//! ones go to training, the next to validation, the rest to test, so the splits are disjoint.
//! LRA's text form wraps every pair in parentheses; its tokenizer drops them and writes `]`
//! as `X`. Everything is deterministic from a seed.

use std::collections::HashSet;
use std::fmt::Write as _;

use rand::{Rng, SeedableRng};

/// Padding token id.
pub const PAD: u32 = 0;
/// Classification token id, put first in every sequence.
pub const CLS: u32 = 1;
/// The 15 ListOps symbols, in token-id order after `PAD` and `CLS`.
pub const SYMBOLS: [&str; 15] = [
    "[MIN", "[MAX", "[MED", "[SM", "X", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
];
/// Vocabulary: padding, CLS and the 15 symbols.
pub const VOCAB_SIZE: usize = 17;
/// Labels are the values 0–9.
pub const CLASSES: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Min,
    Max,
    Med,
    SumMod,
}

impl Op {
    const ALL: [Op; 4] = [Op::Min, Op::Max, Op::Med, Op::SumMod];

    fn symbol(self) -> &'static str {
        match self {
            Op::Min => "[MIN",
            Op::Max => "[MAX",
            Op::Med => "[MED",
            Op::SumMod => "[SM",
        }
    }

    fn apply(self, args: &[u32]) -> u32 {
        match self {
            Op::Min => *args.iter().min().unwrap(),
            Op::Max => *args.iter().max().unwrap(),
            Op::Med => {
                // numpy's median (mean of the middle two for an even count), then int().
                let mut v = args.to_vec();
                v.sort_unstable();
                let n = v.len();
                if n % 2 == 1 {
                    v[n / 2]
                } else {
                    (v[n / 2 - 1] + v[n / 2]) / 2
                }
            }
            Op::SumMod => args.iter().sum::<u32>() % 10,
        }
    }
}

/// A ListOps expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tree {
    Value(u32),
    Apply(Op, Vec<Tree>),
}

impl Tree {
    /// The value the expression evaluates to (0–9).
    pub fn value(&self) -> u32 {
        match self {
            Tree::Value(v) => *v,
            Tree::Apply(op, args) => op.apply(&args.iter().map(Tree::value).collect::<Vec<_>>()),
        }
    }

    /// Length as LRA counts it: operators, values and closing brackets.
    pub fn len(&self) -> usize {
        match self {
            Tree::Value(_) => 1,
            Tree::Apply(_, args) => 2 + args.iter().map(Tree::len).sum::<usize>(),
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// LRA's text form (`to_string`): left-nested pairs `( ( ( [MAX 2 ) 9 ) ] )`.
    pub fn to_lra_string(&self) -> String {
        match self {
            Tree::Value(v) => v.to_string(),
            Tree::Apply(op, args) => {
                let mut s = format!("( {} {} )", op.symbol(), args[0].to_lra_string());
                for a in &args[1..] {
                    s = format!("( {s} {} )", a.to_lra_string());
                }
                format!("( {s} ] )")
            }
        }
    }

    /// Token ids (without CLS), as [`tokenize`] gives them for the text form.
    pub fn tokens(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        self.push_tokens(&mut out);
        out
    }

    fn push_tokens(&self, out: &mut Vec<u32>) {
        match self {
            Tree::Value(v) => out.push(2 + 5 + v),
            Tree::Apply(op, args) => {
                out.push(2 + Op::ALL.iter().position(|o| o == op).unwrap() as u32);
                for a in args {
                    a.push_tokens(out);
                }
                out.push(2 + 4);
            }
        }
    }
}

/// LRA's ListOps tokenizer: drop parentheses, write `]` as `X`, split on white space, map
/// symbols to ids (unknown symbols are an error).
pub fn tokenize(text: &str) -> Result<Vec<u32>, String> {
    text.replace(']', "X")
        .replace(['(', ')'], " ")
        .split_whitespace()
        .map(|s| {
            SYMBOLS
                .iter()
                .position(|&t| t == s)
                .map(|i| i as u32 + 2)
                .ok_or_else(|| format!("unknown ListOps symbol {s:?}"))
        })
        .collect()
}

/// Evaluates a token sequence (prefix notation with `X` closing each operator): an evaluator
/// independent of [`Tree`], for checking generated labels.
pub fn evaluate_tokens(tokens: &[u32]) -> Result<u32, String> {
    let mut stack: Vec<(Option<Op>, Vec<u32>)> = vec![(None, Vec::new())];
    for &t in tokens {
        match t {
            2..=5 => stack.push((Some(Op::ALL[t as usize - 2]), Vec::new())),
            6 => {
                let (op, args) = stack
                    .pop()
                    .filter(|_| !stack.is_empty())
                    .ok_or("unbalanced X")?;
                let op = op.ok_or("unbalanced X")?;
                if args.is_empty() {
                    return Err("operator without arguments".into());
                }
                stack.last_mut().unwrap().1.push(op.apply(&args));
            }
            7..=16 => stack.last_mut().unwrap().1.push(t - 7),
            _ => return Err(format!("token {t} is not a ListOps symbol")),
        }
    }
    match stack.as_slice() {
        [(None, v)] if v.len() == 1 => Ok(v[0]),
        _ => Err("not a single complete expression".into()),
    }
}

/// Generation settings. `Default` is LRA's: depth 10, 10 arguments, 500 < length < 2000,
/// 96 000 / 2 000 / 2 000 examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListOpsConfig {
    pub max_depth: usize,
    pub max_args: usize,
    /// Exclusive bounds on the length.
    pub min_length: usize,
    pub max_length: usize,
    pub train: usize,
    pub valid: usize,
    pub test: usize,
}

impl Default for ListOpsConfig {
    fn default() -> Self {
        ListOpsConfig {
            max_depth: 10,
            max_args: 10,
            min_length: 500,
            max_length: 2000,
            train: 96_000,
            valid: 2_000,
            test: 2_000,
        }
    }
}

/// One example: token ids (no CLS) and the label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub label: u32,
}

/// The three splits.
#[derive(Clone, Debug)]
pub struct ListOps {
    pub config: ListOpsConfig,
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    pub test: Vec<Example>,
}

/// LRA's `generate_tree`: an operator with probability 0.25 below `max_depth`.
fn generate_tree(rng: &mut impl Rng, depth: usize, c: &ListOpsConfig) -> Tree {
    let r: f64 = if depth < c.max_depth {
        rng.random()
    } else {
        1.0
    };
    if r > 0.25 {
        return Tree::Value(rng.random_range(0..10));
    }
    let n = rng.random_range(2..=c.max_args);
    let args = (0..n).map(|_| generate_tree(rng, depth + 1, c)).collect();
    Tree::Apply(Op::ALL[rng.random_range(0..4)], args)
}

impl ListOps {
    /// Generates the splits from `seed`. Fails when the settings cannot produce a tree
    /// (e.g. lengths out of reach of the depth and argument count).
    pub fn generate(config: ListOpsConfig, seed: u64) -> Result<ListOps, String> {
        let c = &config;
        if c.max_args < 2 || c.max_depth < 1 || c.min_length + 1 >= c.max_length {
            return Err(format!("ListOps settings cannot produce a tree: {c:?}"));
        }
        let want = c.train + c.valid + c.test;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut seen = HashSet::with_capacity(want);
        let mut examples = Vec::with_capacity(want);
        let mut tries = 0u64;
        while examples.len() < want {
            tries += 1;
            if tries > 200_000_000 {
                return Err(format!(
                    "only {} distinct trees after {tries} tries: {c:?}",
                    examples.len()
                ));
            }
            let tree = generate_tree(&mut rng, 1, c);
            let len = tree.len();
            if len > c.min_length && len < c.max_length {
                let tokens = tree.tokens();
                if seen.insert(tokens.clone()) {
                    examples.push(Example {
                        tokens,
                        label: tree.value(),
                    });
                }
            }
        }
        let test = examples.split_off(c.train + c.valid);
        let valid = examples.split_off(c.train);
        Ok(ListOps {
            config,
            train: examples,
            valid,
            test,
        })
    }
}

/// The most frequent label of `examples` and its share: the majority-class baseline.
pub fn majority(examples: &[Example]) -> (u32, f64) {
    let mut counts = [0usize; CLASSES];
    for e in examples {
        counts[e.label as usize] += 1;
    }
    let (label, &n) = counts
        .iter()
        .enumerate()
        .max_by_key(|(i, &n)| (n, std::cmp::Reverse(*i)))
        .unwrap();
    (label as u32, n as f64 / examples.len().max(1) as f64)
}

/// Token ids back to text (for display).
pub fn detokenize(tokens: &[u32]) -> String {
    let mut s = String::new();
    for &t in tokens {
        let sym = match t {
            PAD => "<pad>",
            CLS => "<cls>",
            t if (t as usize) < VOCAB_SIZE => SYMBOLS[t as usize - 2],
            _ => "<?>",
        };
        if !s.is_empty() {
            s.push(' ');
        }
        let _ = write!(s, "{sym}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str) -> u32 {
        evaluate_tokens(&tokenize(text).unwrap()).unwrap()
    }

    #[test]
    fn evaluator_follows_lra_semantics() {
        assert_eq!(eval("[MAX 2 9 [MIN 4 7 ] 0 ]"), 9);
        assert_eq!(eval("[MIN 2 9 [MIN 4 7 ] 0 ]"), 0);
        assert_eq!(
            eval("[MED 1 2 3 4 ]"),
            2,
            "int(np.median([1,2,3,4])) = int(2.5)"
        );
        assert_eq!(eval("[MED 9 1 5 ]"), 5);
        assert_eq!(eval("[MED 8 9 ]"), 8, "int(8.5)");
        assert_eq!(eval("[SM 5 7 9 ]"), 1);
        assert_eq!(eval("[SM [MAX 3 8 ] [MED 1 9 0 ] 7 ]"), 6, "8 + 1 + 7 = 16");
        assert_eq!(eval("7"), 7);
        assert!(evaluate_tokens(&tokenize("[MAX 1 ] ]").unwrap()).is_err());
        assert!(evaluate_tokens(&tokenize("[MAX 1").unwrap()).is_err());
        assert!(evaluate_tokens(&tokenize("[SM ]").unwrap()).is_err());
    }

    #[test]
    fn tokenizer_strips_parentheses_and_writes_x() {
        let t = Tree::Apply(Op::Max, vec![Tree::Value(2), Tree::Value(9)]);
        assert_eq!(t.to_lra_string(), "( ( ( [MAX 2 ) 9 ) ] )");
        let ids = tokenize(&t.to_lra_string()).unwrap();
        assert_eq!(detokenize(&ids), "[MAX 2 9 X");
        assert_eq!(ids, t.tokens());
        assert_eq!(ids.len(), t.len());
        assert!(tokenize("( [MAX 2 ] [FIRST").is_err());
        assert_eq!(tokenize("[SM 0 9 ]").unwrap(), vec![5, 7, 16, 6]);
        assert!(
            tokenize("[SM 0 9]").is_err(),
            "like LRA: symbols are split on white space only"
        );
    }

    #[test]
    fn generation_is_deterministic_distinct_and_in_range() {
        let c = ListOpsConfig {
            max_depth: 5,
            max_args: 5,
            min_length: 10,
            max_length: 60,
            train: 300,
            valid: 50,
            test: 50,
        };
        let a = ListOps::generate(c, 7).unwrap();
        let b = ListOps::generate(c, 7).unwrap();
        assert_eq!(a.train, b.train);
        assert_ne!(a.train, ListOps::generate(c, 8).unwrap().train);
        let all: Vec<&Example> = a.train.iter().chain(&a.valid).chain(&a.test).collect();
        assert_eq!(all.len(), 400);
        let distinct: HashSet<&Vec<u32>> = all.iter().map(|e| &e.tokens).collect();
        assert_eq!(
            distinct.len(),
            400,
            "train, valid and test must be disjoint"
        );
        for e in all {
            assert!(e.tokens.len() > 10 && e.tokens.len() < 60);
            assert_eq!(
                evaluate_tokens(&e.tokens).unwrap(),
                e.label,
                "label of {}",
                detokenize(&e.tokens)
            );
        }
    }

    #[test]
    fn text_form_round_trips_through_the_tokenizer() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let c = ListOpsConfig::default();
        for _ in 0..200 {
            let t = generate_tree(&mut rng, 1, &c);
            let ids = tokenize(&t.to_lra_string()).unwrap();
            assert_eq!(ids, t.tokens());
            assert_eq!(evaluate_tokens(&ids).unwrap(), t.value());
        }
    }

    #[test]
    fn impossible_settings_are_errors() {
        let c = ListOpsConfig {
            min_length: 10,
            max_length: 11,
            ..Default::default()
        };
        assert!(ListOps::generate(c, 1).is_err());
    }
}
