from pushbase.cli import app

app(prog_name="pushbase")
