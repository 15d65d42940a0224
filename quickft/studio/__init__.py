"""`quickft studio [OUTPUTS_DIR]`: a local web page over the run directories.

server.py   the command: the FastAPI app and its routes
children.py the `quickft serve` and base-vs-fine-tuned children it chats through (bounded, keyed)
runs.py     what the pages show, read from the run directories as JSON data
base.py     the child process that answers as the base and the fine-tuned model (chat's --compare-base)
static/     the page: index.html, studio.js, studio.css (plotly.min.js comes from the plotly package)
"""
