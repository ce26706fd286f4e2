//! Cycles and a stable topological order over the step graph.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use petgraph::algo::kosaraju_scc;
use petgraph::graph::{DiGraph, NodeIndex};

/// Edges `from -> to` mean `to` needs `from`; nodes are numbered in declaration order.
pub struct StepGraph {
    successors: Vec<BTreeSet<usize>>,
}

impl StepGraph {
    /// A graph of `n` nodes without edges.
    pub fn new(n: usize) -> Self {
        Self {
            successors: vec![BTreeSet::new(); n],
        }
    }

    /// Adds `from -> to`.
    pub fn add_edge(&mut self, from: usize, to: usize) {
        self.successors[from].insert(to);
    }

    /// Whether a node has any edge in or out.
    pub fn is_connected(&self, node: usize) -> bool {
        !self.successors[node].is_empty() || self.successors.iter().any(|s| s.contains(&node))
    }

    /// Every cycle, one per strongly connected component, as a closed chain that starts and
    /// ends at the component's first-declared node, shortest first from there.
    pub fn cycles(&self) -> Vec<Vec<usize>> {
        let mut g = DiGraph::<(), ()>::with_capacity(self.successors.len(), 0);
        let nodes: Vec<NodeIndex> = (0..self.successors.len()).map(|_| g.add_node(())).collect();
        for (from, tos) in self.successors.iter().enumerate() {
            for &to in tos {
                g.add_edge(nodes[from], nodes[to], ());
            }
        }
        let mut cycles = Vec::new();
        // Kosaraju's algorithm walks iteratively: a 100,000-step chain does not recurse.
        for scc in kosaraju_scc(&g) {
            let members: BTreeSet<usize> = scc.iter().map(|n| n.index()).collect();
            let start = *members.iter().next().expect("an scc is never empty");
            if members.len() == 1 && !self.successors[start].contains(&start) {
                continue;
            }
            cycles.push(self.shortest_cycle(start, &members));
        }
        cycles.sort();
        cycles
    }

    fn shortest_cycle(&self, start: usize, members: &BTreeSet<usize>) -> Vec<usize> {
        let mut previous = vec![usize::MAX; self.successors.len()];
        let mut queue = VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for &next in &self.successors[node] {
                if !members.contains(&next) {
                    continue;
                }
                if next == start {
                    let mut back = Vec::new();
                    let mut at = node;
                    while at != start {
                        back.push(at);
                        at = previous[at];
                    }
                    let mut chain = vec![start];
                    chain.extend(back.into_iter().rev());
                    chain.push(start);
                    return chain;
                }
                if previous[next] == usize::MAX {
                    previous[next] = node;
                    queue.push_back(next);
                }
            }
        }
        vec![start, start]
    }

    /// Kahn's algorithm, always taking the first-declared ready node: the same pipeline
    /// gives the same order everywhere. Nodes on cycles are left out.
    pub fn topological_order(&self) -> Vec<usize> {
        let n = self.successors.len();
        let mut indegree = vec![0usize; n];
        for tos in &self.successors {
            for &to in tos {
                indegree[to] += 1;
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(node)) = ready.pop() {
            order.push(node);
            for &next in &self.successors[node] {
                indegree[next] -= 1;
                if indegree[next] == 0 {
                    ready.push(Reverse(next));
                }
            }
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_chain() {
        // 0 -> 1 -> 2 -> 0, and 3 on its own loop.
        let mut g = StepGraph::new(5);
        g.add_edge(0, 1);
        g.add_edge(1, 2);
        g.add_edge(2, 0);
        g.add_edge(3, 3);
        g.add_edge(2, 4);
        assert_eq!(g.cycles(), vec![vec![0, 1, 2, 0], vec![3, 3]]);
    }

    #[test]
    fn stable_order() {
        let mut g = StepGraph::new(4);
        g.add_edge(3, 0);
        g.add_edge(2, 1);
        assert_eq!(g.topological_order(), vec![2, 1, 3, 0]);
    }
}
