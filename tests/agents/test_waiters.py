"""The hub's held queries: answered when their last task finishes, at their deadline, or dropped with their peer."""

from agents.waiters import MAX_WAITERS, Waiter, Waiters


def waiter(name, tasks, deadline=10.0, any=False):
    return Waiter(sock=None, identity=name.encode(), msg_id=name, task_ids=list(tasks), deadline=deadline,
                  pending=set(tasks), any=any)


def test_a_waiter_is_ready_once_all_its_tasks_finished_and_only_once():
    w = Waiters()
    a, b = waiter("a", ["t1", "t2"]), waiter("b", ["t2"])
    assert w.add(a) and w.add(b) and w.pending() == {"t1", "t2"}
    assert w.finished("t2") == [b]  # b had only t2; a still waits for t1
    assert w.finished("t2") == [] and len(w) == 1
    assert w.finished("t1") == [a] and len(w) == 0 and w.pending() == set()


def test_a_waiter_for_any_is_ready_at_its_first_finished_task_and_leaves_no_trace():
    w = Waiters()
    first, every = waiter("first", ["t1", "t2"], any=True), waiter("every", ["t1", "t2"])
    assert w.add(first) and w.add(every)
    assert w.finished("t2") == [first]  # "every" still waits for t1
    assert w.pending() == {"t1"}  # first's other task no longer points at it
    assert w.finished("t1") == [every] and len(w) == 0


def test_deadlines_and_departed_peers_take_waiters_out():
    w = Waiters()
    early, late, gone = waiter("early", ["t1"], 1.0), waiter("late", ["t1"], 5.0), waiter("gone", ["t2"], 5.0)
    for x in (early, late, gone):
        w.add(x)
    assert w.due(2.0) == [early] and w.due(2.0) == []
    w.drop(b"gone")
    assert w.pending() == {"t1"} and w.finished("t1") == [late] and len(w) == 0


def test_the_number_held_is_bounded():
    w = Waiters()
    assert all(w.add(waiter(str(i), ["t"])) for i in range(MAX_WAITERS))
    assert not w.add(waiter("one-too-many", ["t"])) and len(w) == MAX_WAITERS
