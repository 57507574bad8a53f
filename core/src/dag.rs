//! The workflow DAG and the planner that advances a run.
//!
//! The planner is pure: given each step's status it says which steps may start
//! now and whether the run has finished. The engine calls it inside the
//! transaction that applied a result, so planning always sees committed state.
//!
//! Rules:
//! * a step starts once every step it `needs` is `succeeded` or `skipped`;
//! * a skipped step (its `if` was false) satisfies its dependents' `needs`:
//!   they still run, and read `steps.<skipped>.outputs` as an empty object
//!   (`steps.<id>.status` tells them it was skipped);
//! * once a step has failed for good, nothing new starts; the run finishes as
//!   `failed` when nothing is in flight any more.

use std::collections::{BTreeSet, HashMap};

pub use crate::status::{CompensationStatus, RunStatus, StepStatus};

/// What the compensation planner decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompensationPlan {
    /// Steps whose compensation may start now.
    pub start: Vec<String>,
    /// Set once compensation is over.
    pub outcome: Option<CompensationOutcome>,
}

/// How compensation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompensationOutcome {
    /// Everything that had to be undone was.
    Compensated,
    /// These steps' compensations failed for good.
    Failed { steps: Vec<String> },
}

/// How a finished run ended, as far as the planner can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Names the steps that failed.
    Failed {
        failed_steps: Vec<String>,
    },
}

/// What the planner decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Pending steps whose needs are all satisfied, in workflow order.
    pub start: Vec<String>,
    /// Set once nothing can happen any more.
    pub outcome: Option<Outcome>,
}

/// Steps and their `needs`, in workflow order.
#[derive(Debug, Clone)]
pub struct Graph {
    ids: Vec<String>,
    needs: Vec<Vec<usize>>,
    /// The reverse of `needs`: the steps that need each step.
    dependents: Vec<Vec<usize>>,
    index: HashMap<String, usize>,
}

/// Answers "does step `from` (transitively) need step `target`?" for many
/// pairs of one acyclic graph. A direct need costs one look-up; the first
/// other question computes every step's ancestors as bit sets, in
/// topological order: `edges * steps / 64` word operations and
/// `steps^2 / 8` bytes (3 MiB for [`crate::document::MAX_STEPS`]), after
/// which every answer is one bit. Sets of ids per step, or a walk per
/// question, were quadratic in a long chain.
pub struct Reachability<'g> {
    graph: &'g Graph,
    /// Words per step in `ancestors`.
    words: usize,
    /// Step `i`'s ancestors: bits `i * words .. (i + 1) * words`.
    ancestors: Option<Vec<u64>>,
}

impl<'g> Reachability<'g> {
    /// For a graph known to be acyclic ([`Graph::find_cycle`] is `None`).
    pub fn new(graph: &'g Graph) -> Self {
        Self {
            graph,
            words: graph.ids.len().div_ceil(64),
            ancestors: None,
        }
    }

    fn ancestors(&mut self) -> &[u64] {
        let (graph, words) = (self.graph, self.words);
        self.ancestors.get_or_insert_with(|| {
            let mut bits = vec![0u64; graph.ids.len() * words];
            for &node in &graph.topological_order() {
                for &need in &graph.needs[node] {
                    // Needs come first in topological order: their sets are
                    // complete. `need != node` in an acyclic graph.
                    let (from, to) = (need * words, node * words);
                    for w in 0..words {
                        bits[to + w] |= bits[from + w];
                    }
                    bits[to + need / 64] |= 1 << (need % 64);
                }
            }
            bits
        })
    }

    /// Whether `from` needs `target`, directly or transitively.
    pub fn needs(&mut self, from: &str, target: &str) -> bool {
        let graph = self.graph;
        let (Some(&f), Some(&t)) = (graph.index.get(from), graph.index.get(target)) else {
            return false;
        };
        if graph.needs[f].contains(&t) {
            return true;
        }
        let words = self.words;
        self.ancestors()[f * words + t / 64] & (1 << (t % 64)) != 0
    }
}

impl Graph {
    /// Builds the graph; needs naming unknown steps are dropped (validation
    /// reports them before a graph is ever planned).
    pub fn new(steps: impl IntoIterator<Item = (String, Vec<String>)>) -> Graph {
        let steps: Vec<(String, Vec<String>)> = steps.into_iter().collect();
        let index: HashMap<String, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), i))
            .collect();
        let needs: Vec<Vec<usize>> = steps
            .iter()
            .map(|(_, needs)| needs.iter().filter_map(|n| index.get(n).copied()).collect())
            .collect();
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, step_needs) in needs.iter().enumerate() {
            for &n in step_needs {
                dependents[n].push(i);
            }
        }
        Graph {
            ids: steps.into_iter().map(|(id, _)| id).collect(),
            needs,
            dependents,
            index,
        }
    }

    pub fn from_workflow(workflow: &crate::promise::Workflow) -> Graph {
        Graph::new(
            workflow
                .steps
                .iter()
                .map(|s| (s.id.clone(), s.needs.clone())),
        )
    }

    /// Where step `id` is in the workflow, if it is one.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// A dependency cycle as step ids, first id repeated at the end.
    pub fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let mut marks = vec![Mark::New; self.ids.len()];
        let mut path: Vec<usize> = Vec::new();
        for start in 0..self.ids.len() {
            if marks[start] != Mark::New {
                continue;
            }
            // Iterative DFS along `needs` edges: (node, next edge to follow).
            let mut stack = vec![(start, 0usize)];
            marks[start] = Mark::OnPath;
            path.push(start);
            while let Some((node, edge)) = stack.last_mut() {
                let node = *node;
                if let Some(&next) = self.needs[node].get(*edge) {
                    *edge += 1;
                    match marks[next] {
                        Mark::OnPath => {
                            let from = path.iter().position(|&n| n == next).unwrap_or(0);
                            // Edges point from a step to what it needs; report
                            // the cycle in execution order (needed step first).
                            let mut cycle: Vec<String> = path[from..]
                                .iter()
                                .rev()
                                .map(|&n| self.ids[n].clone())
                                .collect();
                            cycle.push(cycle[0].clone());
                            return Some(cycle);
                        }
                        Mark::New => {
                            marks[next] = Mark::OnPath;
                            path.push(next);
                            stack.push((next, 0));
                        }
                        Mark::Done => {}
                    }
                } else {
                    marks[node] = Mark::Done;
                    path.pop();
                    stack.pop();
                }
            }
        }
        None
    }

    /// Every step `id` needs, directly or transitively.
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let Some(&start) = self.index.get(id) else {
            return seen;
        };
        let mut stack = self.needs[start].clone();
        while let Some(n) = stack.pop() {
            if seen.insert(self.ids[n].clone()) {
                stack.extend(self.needs[n].iter().copied());
            }
        }
        seen
    }

    /// Step indices so that every step comes after all it needs.
    fn topological_order(&self) -> Vec<usize> {
        let mut remaining: Vec<usize> = self.needs.iter().map(Vec::len).collect();
        let mut order: Vec<usize> = (0..self.ids.len()).filter(|&i| remaining[i] == 0).collect();
        let mut next = 0;
        while next < order.len() {
            let node = order[next];
            next += 1;
            for &d in &self.dependents[node] {
                remaining[d] -= 1;
                if remaining[d] == 0 {
                    order.push(d);
                }
            }
        }
        order
    }

    /// Plans the saga: a step's compensation runs only after the
    /// compensations of every step that (transitively) depended on it are
    /// done; independent ones run in parallel. `undo` names the steps whose
    /// action succeeded and that declare a compensation; steps missing from
    /// `compensations` count as pending. Once a compensation has failed for
    /// good nothing new starts, and the outcome is set when nothing is in
    /// flight.
    pub fn plan_compensation(
        &self,
        undo: &BTreeSet<String>,
        compensations: &HashMap<String, CompensationStatus>,
    ) -> CompensationPlan {
        let of = |i: usize| {
            compensations
                .get(&self.ids[i])
                .copied()
                .unwrap_or(CompensationStatus::Pending)
        };
        let failed: Vec<String> = (0..self.ids.len())
            .filter(|&i| undo.contains(&self.ids[i]) && of(i) == CompensationStatus::Failed)
            .map(|i| self.ids[i].clone())
            .collect();
        let in_flight =
            (0..self.ids.len()).any(|i| undo.contains(&self.ids[i]) && of(i).is_in_flight());
        if !failed.is_empty() {
            return CompensationPlan {
                start: Vec::new(),
                outcome: (!in_flight).then_some(CompensationOutcome::Failed { steps: failed }),
            };
        }
        // done[i]: step i and everything downstream of it is fully undone.
        let mut done = vec![false; self.ids.len()];
        let mut start = Vec::new();
        for &i in self.topological_order().iter().rev() {
            let downstream_done = self.dependents[i].iter().all(|&d| done[d]);
            let to_undo = undo.contains(&self.ids[i]);
            done[i] = downstream_done && (!to_undo || of(i) == CompensationStatus::Succeeded);
            if to_undo && downstream_done && of(i) == CompensationStatus::Pending {
                start.push(self.ids[i].clone());
            }
        }
        start.sort_by_key(|id| self.index[id]);
        let outcome = done
            .iter()
            .all(|&d| d)
            .then_some(CompensationOutcome::Compensated);
        CompensationPlan { start, outcome }
    }

    /// Every step that (transitively) needs `id`.
    pub fn descendants(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let Some(&start) = self.index.get(id) else {
            return seen;
        };
        let mut frontier = vec![start];
        while let Some(node) = frontier.pop() {
            for &i in &self.dependents[node] {
                if seen.insert(self.ids[i].clone()) {
                    frontier.push(i);
                }
            }
        }
        seen
    }

    /// Decides what happens next given each step's status; steps missing
    /// from `status` count as pending.
    pub fn plan(&self, status: &HashMap<String, StepStatus>) -> Plan {
        let of = |i: usize| {
            status
                .get(&self.ids[i])
                .copied()
                .unwrap_or(StepStatus::Pending)
        };
        let failed: Vec<String> = (0..self.ids.len())
            .filter(|&i| of(i) == StepStatus::Failed)
            .map(|i| self.ids[i].clone())
            .collect();
        let in_flight = (0..self.ids.len()).any(|i| of(i).is_in_flight());
        if !failed.is_empty() {
            return Plan {
                start: Vec::new(),
                outcome: (!in_flight).then_some(Outcome::Failed {
                    failed_steps: failed,
                }),
            };
        }
        let start: Vec<String> = (0..self.ids.len())
            .filter(|&i| of(i) == StepStatus::Pending)
            .filter(|&i| self.needs[i].iter().all(|&n| of(n).satisfies_needs()))
            .map(|i| self.ids[i].clone())
            .collect();
        if !start.is_empty() || in_flight {
            return Plan {
                start,
                outcome: None,
            };
        }
        let unfinished: Vec<String> = (0..self.ids.len())
            .filter(|&i| !of(i).satisfies_needs())
            .map(|i| self.ids[i].clone())
            .collect();
        Plan {
            start,
            outcome: Some(if unfinished.is_empty() {
                Outcome::Succeeded
            } else {
                // Only reachable when steps were cancelled: they did not fail,
                // but the run cannot succeed without them.
                Outcome::Failed {
                    failed_steps: unfinished,
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(edges: &[(&str, &[&str])]) -> Graph {
        Graph::new(edges.iter().map(|(id, needs)| {
            (
                id.to_string(),
                needs.iter().map(|n| n.to_string()).collect(),
            )
        }))
    }

    #[test]
    fn diamond_joins_and_failure_stops_new_work() {
        let g = graph(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        let mut status = HashMap::new();
        assert_eq!(g.plan(&status).start, vec!["a"]);
        status.insert("a".to_string(), StepStatus::Succeeded);
        assert_eq!(g.plan(&status).start, vec!["b", "c"]);
        status.insert("b".to_string(), StepStatus::Succeeded);
        status.insert("c".to_string(), StepStatus::Ready);
        assert_eq!(g.plan(&status), Plan::default());
        status.insert("c".to_string(), StepStatus::Skipped);
        assert_eq!(g.plan(&status).start, vec!["d"]);
        status.insert("d".to_string(), StepStatus::Succeeded);
        assert_eq!(g.plan(&status).outcome, Some(Outcome::Succeeded));

        status.insert("b".to_string(), StepStatus::Failed);
        status.insert("c".to_string(), StepStatus::Running);
        status.insert("d".to_string(), StepStatus::Pending);
        assert_eq!(
            g.plan(&status),
            Plan::default(),
            "waits for in-flight c, starts nothing"
        );
        status.insert("c".to_string(), StepStatus::Succeeded);
        assert_eq!(
            g.plan(&status).outcome,
            Some(Outcome::Failed {
                failed_steps: vec!["b".into()]
            })
        );
    }

    #[test]
    fn finds_cycles_in_execution_order() {
        let g = graph(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]);
        let cycle = g.find_cycle().unwrap();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4);
        let mut members: Vec<_> = cycle[..3].to_vec();
        members.sort();
        assert_eq!(members, vec!["a", "b", "c"]);
        // Each step in the reported order is needed by the next one.
        for pair in cycle.windows(2) {
            let needs = &g.needs[g.index[&pair[1]]];
            assert!(needs.contains(&g.index[&pair[0]]), "{pair:?}");
        }
        assert!(graph(&[("a", &[]), ("b", &["a"])]).find_cycle().is_none());
        assert_eq!(
            g.ancestors("b"),
            ["a", "b", "c"].into_iter().map(String::from).collect()
        );
    }

    #[test]
    fn compensation_runs_in_reverse_dependency_order() {
        // a -> (b, c) -> d; d failed; a, b, c succeeded and all compensate
        // except c.
        let g = graph(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        let undo: BTreeSet<String> = ["a", "b"].into_iter().map(String::from).collect();
        let mut comp = HashMap::new();
        let plan = g.plan_compensation(&undo, &comp);
        assert_eq!(
            plan.start,
            vec!["b"],
            "a waits for b; c has nothing to undo"
        );
        comp.insert("b".to_string(), CompensationStatus::Ready);
        assert_eq!(
            g.plan_compensation(&undo, &comp),
            CompensationPlan::default()
        );
        comp.insert("b".to_string(), CompensationStatus::Succeeded);
        assert_eq!(g.plan_compensation(&undo, &comp).start, vec!["a"]);
        comp.insert("a".to_string(), CompensationStatus::Succeeded);
        assert_eq!(
            g.plan_compensation(&undo, &comp).outcome,
            Some(CompensationOutcome::Compensated)
        );
        comp.insert("a".to_string(), CompensationStatus::Failed);
        assert_eq!(
            g.plan_compensation(&undo, &comp).outcome,
            Some(CompensationOutcome::Failed {
                steps: vec!["a".into()]
            })
        );
        assert_eq!(
            g.descendants("a"),
            ["b", "c", "d"].into_iter().map(String::from).collect()
        );
        assert!(RunStatus::Running.can_become(RunStatus::Compensating));
        assert!(!RunStatus::Succeeded.can_become(RunStatus::Running));
        assert!(!RunStatus::Compensated.can_become(RunStatus::Succeeded));
    }

    /// Random DAGs: edges only go from a lower to a higher index, so there is
    /// never a cycle. `picks` drives which in-flight step finishes next and
    /// whether a started step is skipped instead of run.
    fn dag_strategy() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>, Vec<bool>)> {
        (1usize..25).prop_flat_map(|n| {
            let needs = (0..n)
                .map(|i| proptest::collection::vec(0..i.max(1), 0..=i.min(4)))
                .collect::<Vec<_>>();
            (
                needs,
                proptest::collection::vec(any::<usize>(), 200),
                proptest::collection::vec(proptest::bool::weighted(0.2), n),
            )
        })
    }

    /// Step `s<i>` needs the listed lower-numbered steps: never a cycle.
    fn random_graph(needs: &[Vec<usize>]) -> (Vec<String>, Graph) {
        let ids: Vec<String> = (0..needs.len()).map(|i| format!("s{i}")).collect();
        let graph = Graph::new((0..needs.len()).map(|i| {
            let mut ns: Vec<String> = needs[i]
                .iter()
                .filter(|&&j| j < i)
                .map(|&j| ids[j].clone())
                .collect();
            ns.sort();
            ns.dedup();
            (ids[i].clone(), ns)
        }));
        (ids, graph)
    }

    proptest! {
        /// Random DAGs where a random subset must be undone: each undo runs
        /// once, and only after every undo downstream of it finished.
        #[test]
        fn compensations_run_once_after_everything_downstream((needs, picks, undo_mask) in dag_strategy()) {
            let n = needs.len();
            let (ids, g) = random_graph(&needs);
            // Reuse the skip mask (20% of steps) inverted: most steps need undoing.
            let undo: BTreeSet<String> = (0..n).filter(|&i| !undo_mask[i]).map(|i| ids[i].clone()).collect();
            let mut comp: HashMap<String, CompensationStatus> = HashMap::new();
            let mut in_flight: Vec<String> = Vec::new();
            let mut started: HashMap<String, u32> = HashMap::new();
            let mut pick = picks.iter().cycle();
            for _ in 0..(4 * n + 4) {
                let plan = g.plan_compensation(&undo, &comp);
                for id in &plan.start {
                    *started.entry(id.clone()).or_default() += 1;
                    for later in g.descendants(id) {
                        if undo.contains(&later) {
                            prop_assert_eq!(comp.get(&later).copied(), Some(CompensationStatus::Succeeded),
                                "{} undone before {}", id, later);
                        }
                    }
                    comp.insert(id.clone(), CompensationStatus::Ready);
                    in_flight.push(id.clone());
                }
                if let Some(outcome) = plan.outcome {
                    prop_assert_eq!(outcome, CompensationOutcome::Compensated);
                    prop_assert!(in_flight.is_empty());
                    prop_assert_eq!(started.len(), undo.len());
                    prop_assert!(started.values().all(|&c| c == 1));
                    return Ok(());
                }
                prop_assert!(!in_flight.is_empty(), "stalled with nothing in flight");
                let k = pick.next().copied().unwrap_or(0) % in_flight.len();
                let done = in_flight.swap_remove(k);
                comp.insert(done, CompensationStatus::Succeeded);
            }
            prop_assert!(false, "compensation did not converge");
        }

        #[test]
        fn every_step_runs_once_after_its_needs((needs, picks, skips) in dag_strategy()) {
            let n = needs.len();
            let (ids, g) = random_graph(&needs);
            let mut status: HashMap<String, StepStatus> = HashMap::new();
            let mut started = vec![0u32; n];
            let mut in_flight: Vec<usize> = Vec::new();
            let mut pick = picks.iter().cycle();
            let mut rounds = 0;
            let outcome = loop {
                rounds += 1;
                prop_assert!(rounds < 10 * n + 10, "planner did not converge");
                let plan = g.plan(&status);
                for id in &plan.start {
                    let i = g.index[id];
                    started[i] += 1;
                    for &need in &g.needs[i] {
                        prop_assert!(status[&ids[need]].satisfies_needs(), "{id} started before {}", ids[need]);
                    }
                    if skips[i] {
                        status.insert(id.clone(), StepStatus::Skipped);
                    } else {
                        status.insert(id.clone(), StepStatus::Ready);
                        in_flight.push(i);
                    }
                }
                if let Some(outcome) = plan.outcome {
                    break outcome;
                }
                if plan.start.is_empty() {
                    prop_assert!(!in_flight.is_empty(), "nothing to start and nothing in flight");
                    let k = pick.next().copied().unwrap_or(0) % in_flight.len();
                    let done = in_flight.swap_remove(k);
                    status.insert(ids[done].clone(), StepStatus::Succeeded);
                }
            };
            prop_assert_eq!(outcome, Outcome::Succeeded);
            prop_assert!(started.iter().all(|&c| c == 1), "start counts {:?}", started);
        }
    }
}
