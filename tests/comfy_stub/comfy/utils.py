PROGRESS_BAR_HOOK = None
#: Every update of every bar, for tests: (node_id, value, total, preview is not None)
UPDATES: list = []


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current, self.node_id = total, 0, node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        UPDATES.append((self.node_id, self.current, self.total, preview is not None))
        if PROGRESS_BAR_HOOK is not None:
            PROGRESS_BAR_HOOK(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)
