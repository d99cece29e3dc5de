"use strict";
// The Titanium blog UI: a small router that renders each page from the public
// HTTP API (docs/ui.md). Nothing here ever assigns innerHTML: every node is made
// with createElement and text nodes, so text from the API (titles, post
// content, error messages) can never turn into markup or script.

(() => {
  const PAGE_SIZE = 10;
  const TITLE_MAX = 200;
  const TOKEN_KEY = "titanium.token";
  // Statuses that mean "the service is not there", as opposed to "you asked wrong".
  const DOWN = new Set([0, 502, 503, 504]);

  const view = document.getElementById("view");
  const spinner = document.getElementById("spinner");
  const spinnerLabel = document.getElementById("spinner-label");
  const flashBox = document.getElementById("flash");
  const account = document.getElementById("account");

  // ---- DOM building -------------------------------------------------------

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    return add(el, children);
  }

  function add(parent, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return parent;
  }

  function fragment(...children) {
    return add(document.createDocumentFragment(), children);
  }

  // ---- Session: the token lives in localStorage, the account id and username come from its claims

  function readClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return null;
    }
  }

  const session = {
    current() {
      let token = null;
      try {
        token = localStorage.getItem(TOKEN_KEY);
      } catch {
        return null;
      }
      if (!token) return null;
      // The API verifies the signature on every write; here the claims only
      // decide what to show, so decoding without verifying is enough.
      const claims = readClaims(token);
      const expired = claims && typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();
      if (!claims || typeof claims.username !== "string" || expired) {
        this.clear();
        return null;
      }
      // `sub` is the account id: what owns a post (post.author_id), where the name
      // only labels it (a deleted account's name can be registered again).
      return { token, username: claims.username, userId: Number(claims.sub) };
    },
    save(token) {
      localStorage.setItem(TOKEN_KEY, token);
    },
    clear() {
      try {
        localStorage.removeItem(TOKEN_KEY);
      } catch {
        // Storage disabled: there is nothing to clear.
      }
    },
  };

  // A post without author_id (a legacy one no account was proven to have written) is nobody's.
  function ownedBy(post, me) {
    return me !== null && typeof post.author_id === "number" && post.author_id === me.userId;
  }

  // ---- API ----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, errors) {
      super(message);
      this.status = status;
      this.errors = errors;
    }
    get down() {
      return DOWN.has(this.status);
    }
  }

  async function api(path, { method = "GET", body, auth = false } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth) {
      const me = session.current();
      if (me) headers.Authorization = `Bearer ${me.token}`;
    }
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, "the server did not answer", []);
    }
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const message =
        data && typeof data.message === "string" ? data.message : `HTTP ${response.status}`;
      const errors = data && Array.isArray(data.errors) ? data.errors : [];
      throw new ApiError(response.status, message, errors);
    }
    return { data, response };
  }

  // Pydantic prefixes custom validator messages with "Value error, "; a reader
  // does not need to see it.
  function readable(message) {
    return String(message).replace(/^Value error, /, "");
  }

  // ---- Status: spinner, flash messages, error panels ----------------------

  let pendingFlash = null;

  function loading(on, label = "Loading…") {
    spinnerLabel.textContent = label;
    spinner.hidden = !on;
    view.setAttribute("aria-busy", on ? "true" : "false");
  }

  function flash(text) {
    pendingFlash = text;
  }

  function showFlash() {
    flashBox.hidden = !pendingFlash;
    flashBox.textContent = pendingFlash || "";
    pendingFlash = null;
  }

  function errorPanel(err) {
    if (err instanceof ApiError && err.down) {
      return h(
        "section",
        { class: "panel error", "data-kind": "down" },
        h("h1", {}, "The blog is unavailable right now"),
        h(
          "p",
          {},
          "The blog service did not answer, so posts cannot be shown or saved. ",
          "Nothing you saved before is lost; please try again in a moment.",
        ),
        h("p", { class: "detail" }, `Server said: ${err.message}`, err.status ? ` (HTTP ${err.status})` : ""),
        h("button", { type: "button", class: "button", onclick: () => render() }, "Try again"),
      );
    }
    if (err instanceof ApiError && err.status === 404) {
      return h(
        "section",
        { class: "panel", "data-kind": "missing" },
        h("h1", {}, "Not found"),
        h("p", {}, "This post does not exist, or it was deleted."),
        h("p", {}, h("a", { href: "/blog/" }, "← All posts")),
      );
    }
    const message = err instanceof ApiError ? err.message : "the page could not be shown";
    if (!(err instanceof ApiError)) console.error(err);
    return h(
      "section",
      { class: "panel error", "data-kind": "error" },
      h("h1", {}, "Something went wrong"),
      h("p", {}, readable(message)),
      h("button", { type: "button", class: "button", onclick: () => render() }, "Try again"),
    );
  }

  // ---- Formatting ---------------------------------------------------------

  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  function when(iso) {
    if (!iso) return null;
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return null;
    return h("time", { datetime: iso, title: dateTimeFormat.format(date) }, dateFormat.format(date));
  }

  // The API gives a category's colour as "#rrggbb"; anything else falls back to grey.
  function badge(category, colours) {
    if (!category) return null;
    const colour = colours.get(category.id);
    const el = h(
      "a",
      { class: "badge", href: listUrl({ category: category.slug }), "data-slug": category.slug },
      category.name,
    );
    if (colour && /^#[0-9a-fA-F]{6}$/.test(colour)) {
      el.style.setProperty("--badge", colour);
      el.style.setProperty("--badge-ink", inkFor(colour));
    }
    return el;
  }

  function inkFor(hex) {
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
    const luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    return luminance > 0.6 ? "#111827" : "#ffffff";
  }

  // Excerpts are the first characters of the Markdown source; drop the markup
  // that would only be noise in a one-line summary. Only unambiguous markup:
  // "-" or ">" may be prose once line breaks have become spaces.
  function plainExcerpt(text) {
    return text
      .replace(/!?\[([^\]]*)\]\([^)]*\)?/g, "$1")
      .replace(/(^|\s)#{1,6}\s+/g, "$1")
      .replace(/(\*\*|~~|`+)/g, "");
  }

  function listUrl({ category, author, page } = {}) {
    const query = new URLSearchParams();
    if (category) query.set("category", category);
    if (author) query.set("author", author);
    if (page && page > 1) query.set("page", String(page));
    const text = query.toString();
    return text ? `/blog/?${text}` : "/blog/";
  }

  // ---- Markdown, rendered straight into DOM nodes --------------------------
  //
  // A deliberately small subset: headings, paragraphs, line breaks, emphasis,
  // strike-through, code spans and fenced code, block quotes, lists, rules,
  // links and images. Raw HTML is not a feature: "<script>" is shown as text,
  // because text only ever becomes a text node. Link and image URLs must be
  // http(s) (links also mailto:), which rules out javascript: and data: URLs.

  const markdown = (() => {
    const MAX_DEPTH = 6;
    const SPAN = 1000; // bounds the lazy matches so a hostile post cannot stall the page
    const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
    const ORDERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
    const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
    const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
    const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
    const QUOTE = /^ {0,3}>/;

    function safeUrl(raw, image) {
      let url;
      try {
        url = new URL(raw, location.href);
      } catch {
        return null;
      }
      const allowed = image ? ["http:", "https:"] : ["http:", "https:", "mailto:"];
      return allowed.includes(url.protocol) ? url.href : null;
    }

    function startsBlock(line) {
      return (
        FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
        BULLET.test(line) || ORDERED.test(line)
      );
    }

    function blocks(lines, parent, depth) {
      let i = 0;
      while (i < lines.length) {
        const line = lines[i];
        let m;
        if (!line.trim()) {
          i += 1;
        } else if ((m = FENCE.exec(line))) {
          const body = [];
          i += 1;
          while (i < lines.length && !lines[i].trimStart().startsWith(m[1])) body.push(lines[i++]);
          i += 1;
          const props = m[2] ? { class: `language-${m[2].replace(/[^\w-]/g, "")}` } : {};
          parent.append(h("pre", {}, h("code", props, body.join("\n"))));
        } else if ((m = HEADING.exec(line))) {
          // The post title is the page's only h1: a "#" heading in the content becomes h2.
          const level = Math.max(2, m[1].length);
          parent.append(inline(m[2], h(`h${level}`), depth));
          i += 1;
        } else if (RULE.test(line)) {
          parent.append(h("hr"));
          i += 1;
        } else if (QUOTE.test(line)) {
          const inner = [];
          while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].replace(/^ {0,3}> ?/, ""));
          const quote = h("blockquote");
          if (depth < MAX_DEPTH) blocks(inner, quote, depth + 1);
          else quote.append(inner.join("\n"));
          parent.append(quote);
        } else if (BULLET.test(line) || ORDERED.test(line)) {
          i = list(lines, i, parent, depth);
        } else {
          const para = [line];
          i += 1;
          while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) para.push(lines[i++]);
          parent.append(inline(para.map((text) => text.trim()).join("\n"), h("p"), depth));
        }
      }
      return parent;
    }

    function list(lines, i, parent, depth) {
      const ordered = ORDERED.exec(lines[i]);
      const pattern = ordered ? ORDERED : BULLET;
      const start = ordered ? Number(ordered[1]) : 1;
      const el = h(ordered ? "ol" : "ul", start !== 1 ? { start } : {});
      while (i < lines.length) {
        const m = pattern.exec(lines[i]);
        if (!m) break;
        const text = [ordered ? m[2] : m[1]];
        i += 1;
        // Indented lines continue the item (nested lists are flattened into it).
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !pattern.test(lines[i])) {
          text.push(lines[i++].trim());
        }
        el.append(inline(text.join("\n"), h("li"), depth));
        if (i + 1 < lines.length && !lines[i].trim() && pattern.test(lines[i + 1])) i += 1;
      }
      parent.append(el);
      return i;
    }

    // Inline rules, tried in order at each character that can start one.
    const RULES = [
      [/\\([!-/:-@[-`{-~])/y, (m, out) => out.append(m[1])],
      [new RegExp("(`+)([^`]|[^`][\\s\\S]{0," + SPAN + "}?[^`])\\1(?!`)", "y"), (m, out) => out.append(h("code", {}, m[2]))],
      [/!\[([^\]\n]{0,500})\]\(\s*<?([^\s<>()]+)>?(?:\s+"[^"\n]*")?\s*\)/y, image],
      [/\[([^\]\n]{1,1000})\]\(\s*<?([^\s<>()]+)>?(?:\s+"[^"\n]*")?\s*\)/y, link],
      [/<((?:https?:\/\/|mailto:)[^\s<>]+)>/y, (m, out, depth, noLinks) => out.append(anchor(m[1], m[1], depth, noLinks))],
      [/https?:\/\/[^\s<>()]*[^\s<>().,:;!?"']/y, (m, out, depth, noLinks) => out.append(anchor(m[0], m[0], depth, noLinks))],
      [new RegExp("\\*\\*(?=\\S)([\\s\\S]{0," + SPAN + "}?\\S)\\*\\*", "y"), wrap("strong")],
      [new RegExp("__(?=\\S)([\\s\\S]{0," + SPAN + "}?\\S)__(?!\\w)", "y"), wrap("strong")],
      [new RegExp("\\*(?=[^\\s*])([\\s\\S]{0," + SPAN + "}?[^\\s*])\\*", "y"), wrap("em")],
      [new RegExp("_(?=[^\\s_])([\\s\\S]{0," + SPAN + "}?[^\\s_])_(?!\\w)", "y"), wrap("em")],
      [new RegExp("~~(?=\\S)([\\s\\S]{0," + SPAN + "}?\\S)~~", "y"), wrap("del")],
      [/\n/y, (m, out) => out.append(h("br"))],
    ];
    const TRIGGER = /[\\`![<h*_~\n]/g;

    function wrap(tag) {
      return (m, out, depth, noLinks) => out.append(inline(m[1], h(tag), depth + 1, noLinks));
    }

    function image(m, out) {
      const src = safeUrl(m[2], true);
      out.append(src ? h("img", { src, alt: m[1], loading: "lazy" }) : m[1]);
    }

    function link(m, out, depth, noLinks) {
      const href = noLinks ? null : safeUrl(m[2], false);
      if (!href) {
        out.append(inline(m[1], document.createDocumentFragment(), depth + 1, noLinks));
        return;
      }
      out.append(inline(m[1], h("a", { href, rel: "nofollow noopener noreferrer" }), depth + 1, true));
    }

    function anchor(url, text, depth, noLinks) {
      const href = noLinks ? null : safeUrl(url, false);
      return href ? h("a", { href, rel: "nofollow noopener noreferrer" }, text) : text;
    }

    function inline(text, out, depth = 0, noLinks = false) {
      if (depth > MAX_DEPTH) return add(out, [text]);
      let plainFrom = 0;
      TRIGGER.lastIndex = 0;
      let pos = 0;
      while (pos < text.length) {
        TRIGGER.lastIndex = pos;
        const hit = TRIGGER.exec(text);
        if (!hit) break;
        const at = hit.index;
        const before = at > 0 ? text[at - 1] : "";
        // "_" inside a word (snake_case) and "http" inside a word are plain text.
        const midWord = /\w/.test(before) && (hit[0] === "_" || hit[0] === "h");
        let matched = false;
        if (!midWord) {
          for (const [pattern, apply] of RULES) {
            pattern.lastIndex = at;
            const m = pattern.exec(text);
            if (!m) continue;
            if (at > plainFrom) out.append(text.slice(plainFrom, at));
            apply(m, out, depth, noLinks);
            pos = plainFrom = at + m[0].length;
            matched = true;
            break;
          }
        }
        if (!matched) pos = at + 1;
      }
      if (plainFrom < text.length) out.append(text.slice(plainFrom));
      return out;
    }

    return (source) =>
      blocks(String(source).replace(/\r\n?/g, "\n").split("\n"), h("div", { class: "prose" }), 0);
  })();

  // ---- Pages --------------------------------------------------------------

  async function categoryList() {
    const { data } = await api("/blog/api/categories");
    return data;
  }

  function colourMap(categories) {
    return new Map(categories.map((category) => [category.id, category.color]));
  }

  async function listPage({ params }) {
    const page = Math.max(1, Number.parseInt(params.get("page") || "1", 10) || 1);
    const category = params.get("category") || "";
    const author = params.get("author") || "";
    const query = new URLSearchParams({ offset: String((page - 1) * PAGE_SIZE), limit: String(PAGE_SIZE) });
    if (category) query.set("category", category);
    if (author) query.set("author", author);
    const [{ data: posts, response }, categories] = await Promise.all([
      api(`/blog/api/posts?${query}`),
      categoryList(),
    ]);
    const total = Number.parseInt(response.headers.get("X-Total-Count") || "0", 10) || 0;
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    const colours = colourMap(categories);
    const current = categories.find((c) => c.slug === category);

    let heading = "Latest posts";
    if (category) heading = `Posts in ${current ? current.name : category}`;
    if (author) heading = category ? `${heading} by ${author}` : `Posts by ${author}`;
    document.title = category || author ? `${heading} · Titanium blog` : "Titanium blog";

    const filters = [];
    if (category) filters.push(h("a", { class: "chip", href: listUrl({ author }), title: "Show every category" }, `Category: ${current ? current.name : category} ×`));
    if (author) filters.push(h("a", { class: "chip", href: listUrl({ category }), title: "Show every author" }, `Author: ${author} ×`));

    const cards = posts.map((post) =>
      h(
        "article",
        { class: "card", "data-post-id": post.id },
        h("h2", {}, h("a", { href: `/blog/posts/${post.id}` }, post.title)),
        h(
          "p",
          { class: "meta" },
          h("a", { class: "author", href: listUrl({ author: post.author }) }, post.author),
          when(post.created_at),
          badge(post.category, colours),
        ),
        h("p", { class: "excerpt" }, plainExcerpt(post.excerpt)),
      ),
    );

    let empty = null;
    if (!posts.length) {
      empty = h(
        "p",
        { class: "panel empty" },
        page > 1 && total > 0
          ? ["There are no posts this far back. ", h("a", { href: listUrl({ category, author }) }, "Back to the newest")]
          : category || author
            ? "No posts match this filter yet."
            : "No posts yet. Be the first to write one!",
      );
    }

    const pager = h(
      "nav",
      { class: "pager", "aria-label": "Pages" },
      page > 1 ? h("a", { class: "newer", rel: "prev", href: listUrl({ category, author, page: page - 1 }) }, "← Newer") : h("span"),
      total ? h("span", { class: "page-of" }, `Page ${page} of ${pages} · ${total} post${total === 1 ? "" : "s"}`) : h("span"),
      page * PAGE_SIZE < total ? h("a", { class: "older", rel: "next", href: listUrl({ category, author, page: page + 1 }) }, "Older →") : h("span"),
    );

    const authorForm = h(
      "form",
      {
        class: "author-filter",
        role: "search",
        onsubmit: (event) => {
          event.preventDefault();
          const name = event.target.elements.author.value.trim();
          navigate(listUrl({ category, author: name }));
        },
      },
      h("label", { for: "author-filter" }, "Author"),
      h("div", { class: "inline-form" },
        h("input", { id: "author-filter", name: "author", value: author, placeholder: "username", autocomplete: "off" }),
        h("button", { type: "submit", class: "button small" }, "Filter"),
      ),
    );

    const sidebar = h(
      "aside",
      { class: "sidebar", "aria-label": "Filters" },
      h("h2", {}, "Categories"),
      h(
        "ul",
        { class: "categories" },
        h("li", {}, h("a", { href: listUrl({ author }), "aria-current": category ? null : "true" }, "All posts")),
        categories.map((c) => {
          const dot = h("span", { class: "dot", "aria-hidden": "true" });
          if (/^#[0-9a-fA-F]{6}$/.test(c.color)) dot.style.setProperty("--badge", c.color);
          return h(
            "li",
            {},
            h(
              "a",
              { href: listUrl({ category: c.slug, author }), "data-slug": c.slug, "aria-current": c.slug === category ? "true" : null },
              dot,
              h("span", { class: "name" }, c.name),
              h("span", { class: "count" }, String(c.post_count)),
            ),
          );
        }),
      ),
      authorForm,
    );

    return h(
      "div",
      { class: "layout", "data-page": "list" },
      h("section", { class: "posts" }, h("h1", {}, heading), filters.length ? h("p", { class: "filters" }, filters) : null, empty, cards, pager),
      sidebar,
    );
  }

  async function postPage({ match }) {
    const id = match[1];
    const [{ data: post }, categories] = await Promise.all([api(`/blog/api/posts/${id}`), categoryList()]);
    document.title = `${post.title} · Titanium blog`;
    const me = session.current();
    const own = ownedBy(post, me);
    const edited = post.updated_at && post.created_at && post.updated_at.slice(0, 19) !== post.created_at.slice(0, 19);
    return h(
      "article",
      { class: "post", "data-page": "post", "data-post-id": post.id },
      h("p", { class: "back" }, h("a", { href: "/blog/" }, "← All posts")),
      h("h1", {}, post.title),
      h(
        "p",
        { class: "meta" },
        h("a", { class: "author", href: listUrl({ author: post.author }) }, post.author),
        when(post.created_at),
        edited ? h("span", { class: "edited" }, "edited") : null,
        badge(post.category, colourMap(categories)),
      ),
      own
        ? h(
            "div",
            { class: "actions" },
            h("a", { class: "button", href: `/blog/posts/${post.id}/edit` }, "Edit"),
            h("button", { type: "button", class: "button danger", onclick: () => deletePost(post) }, "Delete"),
          )
        : null,
      markdown(post.content),
    );
  }

  async function deletePost(post) {
    if (!window.confirm(`Delete “${post.title}”? This cannot be undone.`)) return;
    loading(true, "Deleting…");
    try {
      await api(`/blog/api/posts/${post.id}`, { method: "DELETE", auth: true });
      flash("Post deleted.");
      navigate("/blog/");
    } catch (err) {
      loading(false);
      if (!(err instanceof ApiError) || err.down) {
        view.replaceChildren(errorPanel(err));
        return;
      }
      if (err.status === 401) {
        session.clear();
        renderAccount();
      }
      flash(`Could not delete the post: ${readable(err.message)}`);
      showFlash();
    }
  }

  // ---- Forms --------------------------------------------------------------

  // A field with its label and the place its error message goes.
  function field(name, label, control, hint) {
    control.id = `field-${name}`;
    control.name = name;
    const error = h("p", { class: "field-error", id: `error-${name}`, "data-field": name, hidden: true });
    control.setAttribute("aria-describedby", error.id);
    return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hint || null, error);
  }

  // Shows the API's messages next to the fields they name; the rest above the buttons.
  function showErrors(form, err, aliases = {}) {
    clearErrors(form);
    const general = [];
    const list = err.errors.length ? err.errors : [{ field: aliases[`status:${err.status}`] || "", message: err.message }];
    for (const item of list) {
      const name = aliases[item.field] || item.field;
      const slot = name ? form.querySelector(`.field-error[data-field="${CSS.escape(name)}"]`) : null;
      if (slot) {
        slot.textContent = slot.hidden ? readable(item.message) : `${slot.textContent} ${readable(item.message)}`;
        slot.hidden = false;
        form.elements[name]?.setAttribute("aria-invalid", "true");
      } else {
        general.push(item.field && item.field !== "body" ? `${item.field}: ${readable(item.message)}` : readable(item.message));
      }
    }
    const box = form.querySelector(".form-error");
    if (err.down) general.splice(0, general.length, `The blog is unavailable right now (${err.message}). Nothing was saved; please try again in a moment.`);
    box.textContent = general.join(" ");
    box.hidden = !general.length;
    const first = form.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
  }

  function clearErrors(form) {
    for (const slot of form.querySelectorAll(".field-error")) {
      slot.hidden = true;
      slot.textContent = "";
    }
    for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
    const box = form.querySelector(".form-error");
    box.hidden = true;
    box.textContent = "";
  }

  // Runs `action` with the submit button disabled; API errors land in the form.
  function submitting(form, label, action, aliases) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector('button[type="submit"]');
      const idle = button.textContent;
      button.disabled = true;
      button.textContent = label;
      clearErrors(form);
      try {
        await action();
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        showErrors(form, err, aliases);
      } finally {
        button.disabled = false;
        button.textContent = idle;
      }
    });
    return form;
  }

  function formShell(title, fields, submitLabel, extra) {
    return h(
      "form",
      { class: "form panel", novalidate: true },
      h("h1", {}, title),
      fields,
      h("p", { class: "form-error", role: "alert", hidden: true }),
      h("div", { class: "buttons" }, h("button", { type: "submit", class: "button primary" }, submitLabel), extra || null),
    );
  }

  function nextTarget(params) {
    const next = params.get("next") || "";
    // Only paths inside the blog: never an open redirect to another site.
    return /^\/blog\/[^/\\]/.test(next) || next === "/blog/" ? next : "/blog/";
  }

  async function logIn(username, password) {
    const { data } = await api("/api/login", { method: "POST", body: { username, password } });
    session.save(data.token || data.access_token);
  }

  async function loginPage({ params }) {
    document.title = "Log in · Titanium blog";
    const form = formShell(
      "Log in",
      [
        field("username", "Username", h("input", { autocomplete: "username", autocapitalize: "none", spellcheck: "false" })),
        field("password", "Password", h("input", { type: "password", autocomplete: "current-password" })),
      ],
      "Log in",
      h("span", { class: "muted" }, "No account yet? ", h("a", { href: "/blog/signup" }, "Sign up")),
    );
    return submitting(form, "Logging in…", async () => {
      await logIn(form.elements.username.value.trim(), form.elements.password.value);
      flash(`Welcome back, ${session.current().username}.`);
      navigate(nextTarget(params), { replace: true });
    }, { "status:401": "password" });
  }

  async function signupPage({ params }) {
    document.title = "Sign up · Titanium blog";
    const form = formShell(
      "Sign up",
      [
        field("username", "Username", h("input", { autocomplete: "username", autocapitalize: "none", spellcheck: "false" }), h("p", { class: "hint" }, "3–100 letters, digits, “_”, “.” or “-”.")),
        field("email", "Email", h("input", { type: "email", autocomplete: "email" })),
        field("password", "Password", h("input", { type: "password", autocomplete: "new-password" }), h("p", { class: "hint" }, "At least 8 characters.")),
      ],
      "Create account",
      h("span", { class: "muted" }, "Have an account? ", h("a", { href: "/blog/login" }, "Log in")),
    );
    return submitting(form, "Creating account…", async () => {
      const username = form.elements.username.value.trim();
      const password = form.elements.password.value;
      await api("/api/register", { method: "POST", body: { username, email: form.elements.email.value.trim(), password } });
      await logIn(username, password);
      flash(`Welcome, ${session.current().username}! Your account is ready.`);
      navigate(nextTarget(params), { replace: true });
    }, { "status:409": "username" });
  }

  function loginFirst() {
    const next = encodeURIComponent(location.pathname + location.search);
    return h(
      "section",
      { class: "panel", "data-kind": "login-required" },
      h("h1", {}, "Log in to write"),
      h("p", {}, "You need an account to write or edit posts. ", h("a", { href: `/blog/login?next=${next}` }, "Log in"), " or ", h("a", { href: `/blog/signup?next=${next}` }, "sign up"), "."),
    );
  }

  async function writePage() {
    document.title = "New post · Titanium blog";
    if (!session.current()) return loginFirst();
    return editor(null, await categoryList());
  }

  async function editPage({ match }) {
    document.title = "Edit post · Titanium blog";
    const me = session.current();
    if (!me) return loginFirst();
    const [{ data: post }, categories] = await Promise.all([api(`/blog/api/posts/${match[1]}`), categoryList()]);
    if (!ownedBy(post, me)) {
      return h("section", { class: "panel error", "data-kind": "forbidden" }, h("h1", {}, "Not your post"), h("p", {}, "Only its author can edit this post. ", h("a", { href: `/blog/posts/${post.id}` }, "Back to the post")));
    }
    return editor(post, categories);
  }

  function editor(post, categories) {
    const title = h("input", { autocomplete: "off", value: post ? post.title : "" });
    const counter = h("p", { class: "hint counter" });
    const countTitle = () => {
      const length = [...title.value].length;
      counter.textContent = `${length} / ${TITLE_MAX}`;
      counter.classList.toggle("over", length > TITLE_MAX);
    };
    title.addEventListener("input", countTitle);
    countTitle();
    const category = h("input", { list: "category-options", autocomplete: "off", placeholder: "Uncategorized", value: post && post.category ? post.category.name : "" });
    const options = h("datalist", { id: "category-options" }, categories.map((c) => h("option", { value: c.name })));
    const content = h("textarea", { rows: 14 });
    content.value = post ? post.content : "";
    const preview = h("div", { class: "preview", hidden: true, "aria-live": "polite" });
    const previewButton = h("button", {
      type: "button",
      class: "button",
      onclick: () => {
        preview.hidden = !preview.hidden;
        previewButton.textContent = preview.hidden ? "Preview" : "Hide preview";
        if (!preview.hidden) preview.replaceChildren(h("p", { class: "hint" }, "Preview"), markdown(content.value));
      },
    }, "Preview");
    const cancel = h("a", { class: "muted", href: post ? `/blog/posts/${post.id}` : "/blog/" }, "Cancel");

    const form = formShell(
      post ? "Edit post" : "New post",
      [
        field("title", "Title", title, counter),
        field("category_name", "Category", category, h("p", { class: "hint" }, "Pick one or type a new name.")),
        options,
        field("content", "Content", content, h("p", { class: "hint" }, "Markdown: **bold**, _italic_, `code`, [links](https://…), # headings, - lists, > quotes.")),
        preview,
      ],
      post ? "Save changes" : "Publish",
      [previewButton, cancel],
    );
    form.dataset.page = "editor";

    return submitting(form, post ? "Saving…" : "Publishing…", async () => {
      const body = { title: title.value, content: content.value };
      const categoryName = category.value.trim();
      if (categoryName) body.category_name = categoryName;
      let saved;
      try {
        saved = post
          ? await api(`/blog/api/posts/${post.id}`, { method: "PATCH", body, auth: true })
          : await api("/blog/api/posts", { method: "POST", body, auth: true });
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          session.clear();
          renderAccount();
          err.message = "Your session has expired. Log in again (in another tab, to keep this text) and save once more.";
        }
        throw err;
      }
      flash(post ? "Changes saved." : "Post published.");
      navigate(`/blog/posts/${saved.data.id}`, { replace: Boolean(post) });
    }, { category_id: "category_name" });
  }

  // ---- Header -------------------------------------------------------------

  function renderAccount() {
    const me = session.current();
    if (me) {
      account.replaceChildren(
        h("a", { class: "button primary small", href: "/blog/write" }, "Write"),
        h("a", { class: "me", href: listUrl({ author: me.username }), title: "Your posts" }, me.username),
        h("button", {
          type: "button",
          class: "button small",
          onclick: () => {
            session.clear();
            flash("You are logged out.");
            render();
          },
        }, "Log out"),
      );
    } else {
      account.replaceChildren(
        h("a", { class: "button small", href: "/blog/login" }, "Log in"),
        h("a", { class: "button primary small", href: "/blog/signup" }, "Sign up"),
      );
    }
  }

  // ---- Router -------------------------------------------------------------

  const ROUTES = [
    [/^\/blog\/?$/, listPage],
    [/^\/blog\/posts\/(\d{1,10})\/?$/, postPage],
    [/^\/blog\/posts\/(\d{1,10})\/edit\/?$/, editPage],
    [/^\/blog\/write\/?$/, writePage],
    [/^\/blog\/login\/?$/, loginPage],
    [/^\/blog\/signup\/?$/, signupPage],
  ];
  let generation = 0;

  async function render() {
    // A newer navigation wins: answers for an older one are dropped.
    const ticket = ++generation;
    renderAccount();
    showFlash();
    const params = new URLSearchParams(location.search);
    const route = ROUTES.find(([pattern]) => pattern.test(location.pathname));
    loading(true);
    let node;
    try {
      node = route
        ? await route[1]({ params, match: route[0].exec(location.pathname) })
        : errorPanel(new ApiError(404, "not found", []));
    } catch (err) {
      node = errorPanel(err);
    }
    if (ticket !== generation) return;
    view.replaceChildren(node);
    loading(false);
    if (performance.mark) performance.mark("titanium:rendered");
  }

  function navigate(url, { replace = false } = {}) {
    history[replace ? "replaceState" : "pushState"](null, "", url);
    window.scrollTo(0, 0);
    render();
  }

  document.addEventListener("click", (event) => {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const link = event.target.closest("a[href]");
    if (!link || link.target || link.hasAttribute("download")) return;
    const url = new URL(link.href, location.href);
    if (url.origin !== location.origin || !ROUTES.some(([pattern]) => pattern.test(url.pathname))) return;
    event.preventDefault();
    navigate(url.pathname + url.search);
  });
  window.addEventListener("popstate", render);
  // Logging in or out in another tab changes what this one may show.
  window.addEventListener("storage", (event) => {
    if (event.key === TOKEN_KEY) render();
  });

  render();
})();
