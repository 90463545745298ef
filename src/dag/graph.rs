//! Ordering tasks by their dependencies, and naming a cycle when there is one.

use std::collections::{HashMap, VecDeque};

use super::Task;

/// Returns the tasks so that every task follows its upstreams (Kahn's algorithm, stable with
/// respect to file order), or the task ids of one cycle, first id repeated at the end.
pub fn topological_order(tasks: Vec<Task>) -> Result<Vec<Task>, Vec<String>> {
    let index = index_of(&tasks);
    let mut indegree = vec![0usize; tasks.len()];
    let mut downstream = vec![Vec::new(); tasks.len()];
    for (i, task) in tasks.iter().enumerate() {
        for dep in &task.depends_on {
            if let Some(&d) = index.get(dep.as_str()) {
                indegree[i] += 1;
                downstream[d].push(i);
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..tasks.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(tasks.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &d in &downstream[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push_back(d);
            }
        }
    }
    if order.len() < tasks.len() {
        return Err(find_cycle(&tasks, &indegree));
    }
    let mut slots: Vec<Option<Task>> = tasks.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// Walks upstream from a task left with unmet dependencies until a task repeats.
fn find_cycle(tasks: &[Task], indegree: &[usize]) -> Vec<String> {
    let index = index_of(tasks);
    let Some(mut current) = (0..tasks.len()).find(|&i| indegree[i] > 0) else {
        return Vec::new();
    };
    let mut path: Vec<usize> = Vec::new();
    loop {
        if let Some(pos) = path.iter().position(|&p| p == current) {
            let mut cycle: Vec<String> = path[pos..]
                .iter()
                .rev()
                .map(|&i| tasks[i].id.clone())
                .collect();
            cycle.push(cycle[0].clone());
            return cycle;
        }
        path.push(current);
        let next = tasks[current]
            .depends_on
            .iter()
            .filter_map(|d| index.get(d.as_str()).copied())
            .find(|&d| indegree[d] > 0);
        match next {
            Some(n) => current = n,
            None => return path.iter().map(|&i| tasks[i].id.clone()).collect(),
        }
    }
}

fn index_of(tasks: &[Task]) -> HashMap<&str, usize> {
    tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect()
}
