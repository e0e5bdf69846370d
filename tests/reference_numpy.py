"""Slow, obvious numpy re-implementation of the paper's network and discrete algorithm
(spec sections 1-3), written independently of ctpc: explicit loops over samples and layers,
formulas typed from the spec. Only the tests import it."""
import numpy as np


def act(name, h):
    return {"linear": h, "tanh": np.tanh(h), "relu": np.maximum(h, 0.0)}[name]


def dact(name, h):
    return {"linear": np.ones_like(h), "tanh": 1.0 - np.tanh(h) ** 2,
            "relu": (h > 0).astype(float)}[name]


class Net:
    def __init__(self, ws, activation):
        self.ws = [np.array(w, dtype=float) for w in ws]
        self.L = len(ws)
        self.H = self.L - 1
        self.N, self.D = ws[0].shape
        self.s_in = 1 / np.sqrt(self.D)
        self.s_mid = 1 / np.sqrt(self.N * self.L)
        self.s_out = 1 / self.N
        self.act = activation

    def pred(self, h, x, l):
        """Prediction of hidden layer l (0-based) for ONE sample."""
        if l == 0:
            return self.s_in * self.ws[0] @ x
        return h[l - 1] + self.s_mid * self.ws[l] @ act(self.act, h[l - 1])

    def y_hat(self, h):
        return self.s_out * self.ws[-1] @ act(self.act, h[self.H - 1])

    def feedforward(self, x):
        h = np.zeros((self.H, self.N))
        for l in range(self.H):
            h[l] = self.pred(h, x, l)
        return h

    def residual(self, h, x):
        return np.array([h[l] - self.pred(h, x, l) for l in range(self.H)])

    def grad_h(self, h, lam, x, y, rho):
        """dL_rho/dh for ONE sample."""
        r = self.residual(h, x)
        g = rho * r + lam
        out = np.zeros_like(h)
        for l in range(self.H):
            out[l] = g[l]
            if l + 1 < self.H:
                J = np.eye(self.N) + self.s_mid * self.ws[l + 1] @ np.diag(dact(self.act, h[l]))
                out[l] -= J.T @ g[l + 1]
            else:
                out[l] += self.s_out * dact(self.act, h[l]) * (self.ws[-1].T @ (self.y_hat(h) - y))
        return out

    def grad_w(self, hs, lams, xs, ys, rho):
        """dL_rho/dW, batch mean."""
        B = len(xs)
        gw = [np.zeros_like(w) for w in self.ws]
        for b in range(B):
            h, lam, x, y = hs[b], lams[b], xs[b], ys[b]
            g = rho * self.residual(h, x) + lam
            gw[0] += -self.s_in * np.outer(g[0], x) / B
            for l in range(1, self.H):
                gw[l] += -self.s_mid * np.outer(g[l], act(self.act, h[l - 1])) / B
            gw[-1] += self.s_out * np.outer(self.y_hat(h) - y, act(self.act, h[-1])) / B
        return gw


def discrete(net, xs, ys, *, method, eta, alpha, rho, T, inner, timing):
    """Spec section 3, sample by sample. Returns h [B,H,N], lam [B,H,N], weight gradients."""
    if method == "pc":
        alpha = 0.0
    hs = np.array([net.feedforward(x) for x in xs])
    lams = np.zeros_like(hs)
    for b in range(len(xs)):
        x, y = xs[b], ys[b]
        h, lam = hs[b], lams[b]
        for _ in range(T - 1):
            for _ in range(inner):
                h = h - eta * net.grad_h(h, lam, x, y, rho)
            lam = lam + alpha * net.residual(h, x)
        for _ in range(inner):
            h = h - eta * net.grad_h(h, lam, x, y, rho)
        if timing == "post_dual":
            lam = lam + alpha * net.residual(h, x)
        hs[b], lams[b] = h, lam
    return hs, lams, net.grad_w(hs, lams, xs, ys, rho)
