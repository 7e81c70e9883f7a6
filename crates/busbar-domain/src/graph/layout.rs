//! A layered layout of a directed graph, drawn left to right: the layering method of
//! Sugiyama et al., kept simple. Pure and deterministic: the same nodes and edges, in the
//! same order, always give the same layout.
//!
//! 1. Cycles: a depth-first search from each node in index order; an edge to a node still
//!    on the search's stack closes a cycle, and is laid out reversed (drawn right to left).
//! 2. Layers: a node's layer is the longest path to it from a source (a node nothing
//!    feeds), so every edge, once reversed where it closes a cycle, goes left to right.
//! 3. Ranks: node layer `l` is rank `2 l`; the odd rank between two node layers holds the
//!    labels of the edges that leave the layer before it. An edge gets one vertex in each
//!    rank it crosses: the first holds its label, the others are bends that take a slot
//!    in their rank instead of running through a node or a label.
//! 4. Order within a rank: each vertex by the mean position of its neighbours in the rank
//!    before (then after, and so on, five sweeps), ties kept in the previous order, which
//!    starts as index order.

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The vertices of each rank, top to bottom. Vertices `0..n` are the nodes; those from
    /// `n` on are the vertices of edges (see [`Route::Chain`]).
    pub ranks: Vec<Vec<usize>>,
    /// The rank of each vertex.
    pub rank: Vec<usize>,
    /// The position of each vertex in its rank.
    pub position: Vec<usize>,
    /// How each edge is drawn, in the order the edges were given.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through these vertices, one per rank crossed, left to right; the first is the
    /// edge's label. `reversed`: the edge closes a cycle, so the vertices go from its
    /// target to its source, and it is drawn right to left.
    Chain { via: Vec<usize>, reversed: bool },
    /// From a node to itself.
    SelfLoop,
}

/// Lays out `n` nodes and the `edges` between them (pairs of node indices, each `< n`).
pub fn layered(n: usize, edges: &[(usize, usize)]) -> Layout {
    let mut out: Vec<Vec<(usize, usize)>> = vec![vec![]; n];
    for (e, &(u, v)) in edges.iter().enumerate() {
        out[u].push((e, v));
    }
    // 1. Back edges, then every edge oriented left to right.
    let mut state = vec![Visit::New; n];
    let mut back = vec![false; edges.len()];
    for s in 0..n {
        if state[s] == Visit::New {
            dfs(s, &out, &mut state, &mut back);
        }
    }
    let oriented: Vec<(usize, usize)> =
        edges.iter().zip(&back).map(|(&(u, v), &b)| if b { (v, u) } else { (u, v) }).collect();
    let mut succs: Vec<Vec<usize>> = vec![vec![]; n];
    let mut indegree = vec![0usize; n];
    for &(u, v) in oriented.iter().filter(|(u, v)| u != v) {
        succs[u].push(v);
        indegree[v] += 1;
    }
    // 2. Longest path from a source, in topological order (Kahn's, smallest index first).
    let mut ready: BTreeSet<usize> = (0..n).filter(|&v| indegree[v] == 0).collect();
    let mut layer = vec![0usize; n];
    while let Some(u) = ready.pop_first() {
        for &v in &succs[u] {
            layer[v] = layer[v].max(layer[u] + 1);
            indegree[v] -= 1;
            if indegree[v] == 0 {
                ready.insert(v);
            }
        }
    }
    // 3. Ranks, and the vertices of each edge.
    let mut rank: Vec<usize> = layer.iter().map(|l| 2 * l).collect();
    let mut routes = Vec::with_capacity(edges.len());
    let mut segments = vec![];
    for (e, &(u, v)) in oriented.iter().enumerate() {
        if u == v {
            routes.push(Route::SelfLoop);
            continue;
        }
        let mut via = vec![];
        let mut prev = u;
        for r in rank[u] + 1..rank[v] {
            let w = rank.len();
            rank.push(r);
            via.push(w);
            segments.push((prev, w));
            prev = w;
        }
        segments.push((prev, v));
        routes.push(Route::Chain { via, reversed: back[e] });
    }
    // 4. Order within ranks.
    let vertices = rank.len();
    let rank_count = rank.iter().max().map_or(0, |m| m + 1);
    let mut ranks = vec![vec![]; rank_count];
    for (v, &r) in rank.iter().enumerate() {
        ranks[r].push(v);
    }
    let mut preds = vec![vec![]; vertices];
    let mut succs = vec![vec![]; vertices];
    for &(u, v) in &segments {
        succs[u].push(v);
        preds[v].push(u);
    }
    let mut position = vec![0usize; vertices];
    place(&ranks, &mut position);
    for down in [true, false, true, false, true] {
        let order: Vec<usize> = if down { (1..rank_count).collect() } else { (0..rank_count).rev().skip(1).collect() };
        let neighbours = if down { &preds } else { &succs };
        for r in order {
            let key = |v: usize| -> f64 {
                let ns = &neighbours[v];
                if ns.is_empty() {
                    position[v] as f64
                } else {
                    ns.iter().map(|&w| position[w] as f64).sum::<f64>() / ns.len() as f64
                }
            };
            let mut keyed: Vec<(f64, usize, usize)> = ranks[r].iter().map(|&v| (key(v), position[v], v)).collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            ranks[r] = keyed.into_iter().map(|(_, _, v)| v).collect();
            for (i, &v) in ranks[r].iter().enumerate() {
                position[v] = i;
            }
        }
    }
    Layout { ranks, rank, position, routes }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    OnStack,
    Done,
}

fn dfs(u: usize, out: &[Vec<(usize, usize)>], state: &mut [Visit], back: &mut [bool]) {
    state[u] = Visit::OnStack;
    for &(e, v) in &out[u] {
        match state[v] {
            Visit::New => dfs(v, out, state, back),
            Visit::OnStack => back[e] = true,
            Visit::Done => {}
        }
    }
    state[u] = Visit::Done;
}

fn place(layers: &[Vec<usize>], position: &mut [usize]) {
    for l in layers {
        for (i, &v) in l.iter().enumerate() {
            position[v] = i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_is_the_longest_path_from_a_source() {
        // 0 -> 1 -> 2, and 0 -> 2 directly: 2 is in layer 2 (rank 4), so the direct edge
        // has a label in rank 1 and bends in ranks 2 and 3.
        let l = layered(3, &[(0, 1), (1, 2), (0, 2)]);
        assert_eq!(&l.rank[..3], &[0, 2, 4]);
        assert_eq!(l.routes[0], Route::Chain { via: vec![3], reversed: false });
        assert_eq!(l.routes[2], Route::Chain { via: vec![5, 6, 7], reversed: false });
        assert_eq!(&l.rank[5..], &[1, 2, 3]);
        assert_eq!(l.ranks.len(), 5);
    }

    #[test]
    fn cycles_are_reversed_and_self_loops_kept_apart() {
        let l = layered(3, &[(0, 1), (1, 2), (2, 0), (1, 1)]);
        assert_eq!(&l.rank[..3], &[0, 2, 4]);
        assert_eq!(l.routes[2], Route::Chain { via: vec![5, 6, 7], reversed: true });
        assert_eq!(l.routes[3], Route::SelfLoop);
    }

    #[test]
    fn order_follows_the_neighbours() {
        // 0 feeds 3, 1 feeds 2: in layer 1 the node fed by 0 comes first.
        let l = layered(4, &[(1, 2), (0, 3)]);
        assert_eq!(l.ranks, vec![vec![0, 1], vec![5, 4], vec![3, 2]]);
        assert_eq!(l, layered(4, &[(1, 2), (0, 3)]));
    }
}
